"""PyTorch interoperability without PyTorch: load a torchvision-style ``state_dict`` into a
cnncore model (and write one back).

The zoo's ResNet, VGG, DenseNet and ``alexnet(variant='torchvision')`` have torchvision's
module structure and parameter names, and cnncore uses PyTorch's layouts (NCHW activations,
convolution weights ``(C_out, C_in / groups, kH, kW)``, linear weights ``(out, in)``, the
same flattening order), so the arrays copy over one to one::

    # once, where torch is installed:
    #   sd = torchvision.models.resnet18(weights="DEFAULT").state_dict()
    #   np.savez("resnet18.npz", **{k: v.numpy() for k, v in sd.items()})
    from cnncore import zoo
    from cnncore.interop import load_torch_state_dict
    model = load_torch_state_dict(zoo.resnet(18), "resnet18.npz").eval()

What the mapping does:

* ``num_batches_tracked`` entries (PyTorch's BatchNorm counter) are ignored;
* a ``module.`` prefix (``nn.DataParallel`` checkpoints) is removed;
* the old DenseNet names of torchvision's published files (``denselayer1.norm.1.weight``)
  become the current ones (``denselayer1.norm1.weight``), as torchvision itself does;
* values may be NumPy arrays, anything :func:`numpy.asarray` accepts, or torch tensors
  (converted with ``.detach().cpu().numpy()``, without importing torch here); they are cast
  to the model's dtype.

The other way, :func:`to_torch` (in :mod:`cnncore.interop_torch`) builds an equivalent
``torch.nn.Module`` of any cnncore model, with its weights copied (torch is imported only
inside that function).
"""

import os
import re

import numpy as np

from .interop_torch import register_torch_converter, to_torch

__all__ = ["load_torch_state_dict", "torch_state_dict", "normalize_torch_names", "to_torch",
           "register_torch_converter"]

_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _to_numpy(value):
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read(state):
    """A ``{name: ndarray}`` dict from a dict-like object or an ``.npz`` path."""
    if isinstance(state, (str, bytes, os.PathLike)):
        path = os.fspath(state)
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if isinstance(state, np.lib.npyio.NpzFile):
        return {k: state[k] for k in state.files}
    if not hasattr(state, "items"):
        raise TypeError("load_torch_state_dict: state must be a dict of arrays or the path of "
                        f"an .npz file, got {type(state).__name__}")
    return {str(k): _to_numpy(v) for k, v in state.items()}


def normalize_torch_names(state):
    """``state`` with PyTorch-only entries dropped and old names updated: without
    ``num_batches_tracked``, without a ``module.`` prefix on every key, DenseNet's
    ``norm.1`` -> ``norm1``. Returns a new dict."""
    keys = list(state)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    out = {}
    for key, value in state.items():
        name = key[len("module."):] if strip else key
        if name.endswith("num_batches_tracked"):
            continue
        m = _DENSENET_OLD.match(name)
        if m:
            name = m.group(1) + m.group(2)
        out[name] = value
    return out


def _targets(model):
    """{name: (kind, layer, attribute name)} of every parameter and buffer of ``model``."""
    out = {}
    for prefix, layer in model.named_layers():
        pre = prefix + "." if prefix else ""
        for pname in layer._params:
            out[pre + pname] = ("param", layer, pname)
        for bname in layer._buffers:
            out[pre + bname] = ("buffer", layer, bname)
    return out


def load_torch_state_dict(model, state, strict=True):
    """Copy a PyTorch ``state_dict`` into ``model`` (in place) and return the model.

    Parameters
    ----------
    model : Layer
        A zoo model (or any model whose parameter names follow the PyTorch module's).
    state : dict or str or os.PathLike
        ``{name: array}`` (NumPy arrays, array-likes or torch tensors), or the path of an
        ``.npz`` file holding them, e.g. written with
        ``np.savez(path, **{k: v.numpy() for k, v in torch_model.state_dict().items()})``.
    strict : bool
        If True (default) every parameter and buffer of the model must be in ``state`` and
        every entry of ``state`` must belong to the model (after :func:`normalize_torch_names`).
        If False, names missing on either side are skipped (e.g. to load a backbone into a
        model with another classifier: drop ``fc.*`` from ``state`` first) and listed in
        ``model.load_report``.

    Returns
    -------
    Layer
        ``model``, with ``load_report`` = ``{"missing": [...], "unexpected": [...]}``
        (names the model has that ``state`` lacks, and the reverse).

    Raises
    ------
    ValueError
        On a shape mismatch (always), or on missing / unexpected names when ``strict``.
    """
    arrays = normalize_torch_names(_read(state))
    targets = _targets(model)
    missing = [k for k in targets if k not in arrays]
    unexpected = [k for k in arrays if k not in targets]
    if strict and (missing or unexpected):
        def show(names):
            if not names:
                return "none"
            return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10
                                            else "")
        raise ValueError(f"load_torch_state_dict: the state does not match "
                         f"{type(model).__name__} (missing: {show(missing)}; unexpected: "
                         f"{show(unexpected)})")
    for name, (kind, layer, attr) in targets.items():
        if name not in arrays:
            continue
        arr = arrays[name]
        old = layer._params[attr].data if kind == "param" else layer._buffers[attr]
        if arr.shape != old.shape:
            raise ValueError(f"load_torch_state_dict: {name!r} has shape {tuple(arr.shape)} in "
                             f"the state, the model expects {tuple(old.shape)}")
        if kind == "param":
            old[...] = arr
            layer._params[attr].mark_changed()
        else:
            layer.set_buffer(attr, np.array(arr, dtype=old.dtype, copy=True))
    model.load_report = {"missing": missing, "unexpected": unexpected}
    return model


def torch_state_dict(model):
    """The reverse mapping: ``{name: ndarray copy}`` of every parameter and buffer, plus a
    ``num_batches_tracked`` (int64 0) for every batch-norm layer, as PyTorch's
    ``load_state_dict`` expects (``torch.from_numpy`` each value to use it there)."""
    from .layers.norm import _BatchNorm

    out = {}
    for prefix, layer in model.named_layers():
        pre = prefix + "." if prefix else ""
        for pname, p in layer._params.items():
            out[pre + pname] = p.data.copy()
        for bname, b in layer._buffers.items():
            out[pre + bname] = b.copy()
        if isinstance(layer, _BatchNorm):
            out[pre + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return out
