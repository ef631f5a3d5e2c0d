"""Look inside a model: its first-layer filters and the feature maps of one input.

>>> import numpy as np
>>> from cnncore import lenet5, viz
>>> model, x = lenet5(seed=0), np.zeros((1, 28, 28), np.float32)
>>> viz.plot_filters(model, "filters.png")        # every first-layer kernel  # doctest: +SKIP
>>> viz.plot_feature_maps(model, x, "maps.png")   # activations of one image  # doctest: +SKIP
>>> maps = viz.feature_maps(model, x)             # {layer name: (C, H, W) array}
>>> maps["1"].shape                               # after the first ReLU
(6, 28, 28)

Needs matplotlib (``pip install cnncore[plot]``); PNGs are written with the Agg backend, so
no display is needed. Layer names are the dotted names of ``model.named_layers()``: ``"1"``
for the first ReLU of LeNet-5, ``"features.2"`` in AlexNet, ``"layer1.0"`` in a ResNet.
"""

import math

import numpy as np

from .layers import Conv2d, LeakyReLU, ReLU, Sequential, Sigmoid, Tanh

__all__ = ["first_conv", "feature_maps", "plot_filters", "plot_feature_maps"]

_ACTIVATIONS = (ReLU, LeakyReLU, Sigmoid, Tanh)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("cnncore.viz needs matplotlib: pip install matplotlib "
                          "(or cnncore[plot])") from e
    return plt


def first_conv(model):
    """The first :class:`~cnncore.layers.Conv2d` of ``model`` (depth first)."""
    for _, layer in model.named_layers():
        if isinstance(layer, Conv2d):
            return layer
    raise ValueError(f"first_conv: {type(model).__name__} has no Conv2d layer")


def _plain_sequence(layer):
    # Containers whose forward is Sequential's (NamedSequential, ResNet, VGG, ...) can be
    # run child by child; blocks with their own forward (ResidualBlock, DenseLayer,
    # Residual, Concat) are run whole.
    return isinstance(layer, Sequential) and type(layer).forward is Sequential.forward


def _run(container, x, prefix, out):
    for name, child in container.named_children():
        full = prefix + name
        if _plain_sequence(child):
            x = _run(child, x, full + ".", out)
        else:
            x = child.forward(x)
        out[full] = x
    return x


def feature_maps(model, x):
    """Outputs of every layer for one input, in eval mode.

    Parameters
    ----------
    model : Layer
        Usually a Sequential (or a zoo model); nested plain containers are entered, blocks
        with their own forward (residual blocks, dense layers) give their output only.
    x : ndarray
        One sample ``(C, H, W)`` (or a batch of one, ``(1, C, H, W)``), already prepared as
        the model expects (dtype, normalisation).

    Returns
    -------
    dict
        ``{dotted layer name: output without the batch axis}`` in forward order.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.shape[0] != 1:
        raise ValueError(f"feature_maps: expected one sample (C, H, W), got shape {x.shape}")
    if model.dtype is not None and x.dtype != model.dtype:
        x = x.astype(model.dtype)
    was_training = model.training
    model.eval()
    try:
        out = {}
        if _plain_sequence(model):
            _run(model, np.ascontiguousarray(x), "", out)
        else:
            out["output"] = model.forward(np.ascontiguousarray(x))
    finally:
        model.train(was_training)
    return {k: v[0] for k, v in out.items()}


def _save_or_return(fig, path, plt):
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _image(x):
    """(C, H, W) -> something imshow draws: gray (H, W) or RGB (H, W, 3) in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 3:
        img = np.transpose(x, (1, 2, 0))
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img), None
    return x.mean(axis=0), "gray"


def plot_filters(model, path=None, max_filters=64, ncols=8, title=None):
    """Draw the kernels of the first convolution (or of a weight array).

    Parameters
    ----------
    model : Layer, Conv2d or ndarray ``(C_out, C_in, kH, kW)``
    path : str, optional
        Save the figure there (PNG) and return the path; without it return the Figure.
    max_filters : int
        Draw at most this many output channels.
    ncols : int
        Filters per row.

    RGB kernels (3 input channels) are drawn in colour, each stretched to its own min..max;
    one-channel kernels in gray on one symmetric scale (mid-gray = 0, so the sign shows);
    kernels with other channel counts as the mean over their input channels.
    """
    plt = _pyplot()
    if isinstance(model, np.ndarray):
        w, name = model, "weight"
    else:
        conv = model if isinstance(model, Conv2d) else first_conv(model)
        w, name = conv.weight.data, repr(conv)
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"plot_filters: expected a weight (C_out, C_in, kH, kW), got shape "
                         f"{w.shape}")
    n = min(len(w), int(max_filters))
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.55 * nrows + 0.7),
                             squeeze=False)
    rgb = w.shape[1] == 3
    lim = np.abs(w[:n]).max() or 1.0
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        if rgb:
            k = np.transpose(w[i], (1, 2, 0))
            lo, hi = k.min(), k.max()
            ax.imshow((k - lo) / (hi - lo) if hi > lo else np.zeros_like(k),
                      interpolation="nearest")
        else:
            ax.imshow(w[i].mean(axis=0), cmap="gray", vmin=-lim, vmax=lim,
                      interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
    how = ("RGB, each stretched" if rgb else
           "gray, 0 = mid-gray" if w.shape[1] == 1 else f"mean over {w.shape[1]} channels")
    fig.suptitle(title or f"{w.shape[0]} filters {w.shape[1]}x{w.shape[2]}x{w.shape[3]} "
                          f"({how})\n{name}", fontsize=9)
    fig.tight_layout()
    return _save_or_return(fig, path, plt)


def plot_feature_maps(model, x, path=None, layers=None, max_maps=16, ncols=8, title=None):
    """Draw one input and the feature maps it produces in ``layers``.

    Parameters
    ----------
    model : Layer
    x : ndarray
        One sample ``(C, H, W)`` prepared as the model expects.
    path : str, optional
        Save the figure there (PNG) and return the path; without it return the Figure.
    layers : list of str, optional
        Dotted layer names (see :func:`feature_maps`); default: the outputs of the first two
        activation layers with a spatial output (for LeNet-5: after each convolution's ReLU),
        else the first two layers with a spatial output.
    max_maps : int
        Channels drawn per layer.
    """
    plt = _pyplot()
    maps = feature_maps(model, x)
    if layers is None:
        named = dict(model.named_layers())
        spatial = [k for k, v in maps.items() if v.ndim == 3]
        acts = [k for k in spatial if isinstance(named.get(k), _ACTIVATIONS)]
        layers = (acts or spatial)[:2]
        if not layers:
            raise ValueError("plot_feature_maps: the model has no layer with a spatial "
                             "(C, H, W) output")
    else:
        unknown = [k for k in layers if k not in maps]
        if unknown:
            raise ValueError(f"plot_feature_maps: no output named {unknown} (known: "
                             f"{', '.join(maps)})")
    ncols = max(1, int(ncols))
    blocks = []
    for k in layers:
        v = maps[k]
        if v.ndim != 3:
            raise ValueError(f"plot_feature_maps: layer {k!r} has output shape {v.shape}, "
                             "not (C, H, W)")
        blocks.append((k, v[:max_maps], math.ceil(min(len(v), max_maps) / ncols)))
    nrows = 1 + sum(b[2] for b in blocks)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    xin = np.asarray(x)
    xin = xin[0] if xin.ndim == 4 else xin
    img, cmap = _image(xin)
    axes[0, 0].imshow(img, cmap=cmap)
    axes[0, 0].set_title(f"input {tuple(xin.shape)}", fontsize=8, loc="left")
    row = 1
    named = dict(model.named_layers())
    for k, v, rows in blocks:
        full = maps[k].shape
        for i, fm in enumerate(v):
            ax = axes[row + i // ncols, i % ncols]
            ax.imshow(fm, cmap="viridis")
            # The layer's label on a line of its own above the first map of its rows.
            label = f"layer {k!r} ({type(named[k]).__name__}) -> {tuple(full)}\n" if i == 0 else ""
            ax.set_title(f"{label}{i}", fontsize=8, loc="left")
        row += rows
    fig.suptitle(title or f"feature maps of one input ({type(model).__name__})", fontsize=9)
    fig.tight_layout()
    return _save_or_return(fig, path, plt)
