"""Model-level helpers: :func:`summary` (a Keras-like table), :func:`predict` (batched
inference in eval mode) and ready-made architectures (:func:`lenet5`).

Any layer can be a model; in practice a model is a :class:`cnncore.layers.Sequential`.
``model.summary(input_shape)``, ``model.save(path)`` and ``model.predict(x)`` are methods of
every layer that call the functions here and in :mod:`cnncore.serialization`.
"""

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from ._typing import DTypeLike, FloatArray
from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .layers.base import register_model_function, shape_str

__all__ = ["summary", "predict", "lenet5", "count_parameters"]

if TYPE_CHECKING:
    from .layers.base import Layer

_Row = Tuple[str, str, int, int]


def count_parameters(model: "Layer") -> int:
    """Number of trainable scalars of ``model``."""
    return int(model.num_parameters())


def _rows(layer: "Layer", name: str, input_shape: Tuple[int, ...], depth: int,
          rows: List[_Row]) -> Tuple[int, ...]:
    children = getattr(layer, "summary_children", None)
    own = int(sum(p.size for p in layer._params.values()))
    own_buf = int(sum(b.size for b in layer._buffers.values()))
    out_shape = tuple(layer.output_shape(input_shape))
    label = ("  " * depth) + (f"{name} " if name else "") + f"({type(layer).__name__})"
    rows.append((label, "(None, " + ", ".join(str(d) for d in out_shape) + ")", own, own_buf))
    if children is not None:
        for cname, child, cin in children(input_shape):
            _rows(child, f"{name}.{cname}" if name else cname, cin, depth + 1, rows)
    return out_shape


def summary(model: "Layer", input_shape: Optional[Sequence[int]] = None,
            print_fn: Optional[Callable[[str], object]] = print) -> str:
    """Table of layers, output shapes and parameter counts, with totals (like Keras).

    Parameters
    ----------
    model : Layer
    input_shape : tuple
        Shape of one input sample (no batch axis), e.g. ``(1, 28, 28)``. If omitted,
        ``model.input_shape`` is used when the model has that attribute.
    print_fn : callable or None
        Called with the table; None to only return it.

    Returns
    -------
    str
        The table. Containers print their children indented below them.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("summary: pass input_shape, the shape of one sample without the "
                             "batch axis, e.g. model.summary((1, 28, 28))")
    shape_in = tuple(int(s) for s in input_shape)
    rows: List[_Row] = []
    top_children = getattr(model, "summary_children", None)
    if top_children is not None and isinstance(model, Sequential):
        for cname, child, cin in model.summary_children(shape_in):
            _rows(child, cname, cin, 0, rows)
    else:
        _rows(model, "", shape_in, 0, rows)
    total = int(model.num_parameters())
    buffers = int(sum(b.size for _, b in model.named_buffers()))
    w0 = max([len("Layer (type)")] + [len(r[0]) for r in rows]) + 2
    w1 = max([len("Output Shape")] + [len(r[1]) for r in rows]) + 2
    w2 = max(len("Param #"), len(f"{total:,}"))
    width = w0 + w1 + w2
    lines = [f'Model: "{type(model).__name__}"  input {shape_str(shape_in)}',
             "_" * width,
             f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>{w2}}",
             "=" * width]
    for label, shape, n, _ in rows:
        lines.append(f"{label:<{w0}}{shape:<{w1}}{n:>{w2},}")
    lines += ["=" * width,
              f"Total params: {total:,}",
              f"Trainable params: {total:,}",
              f"Non-trainable buffers: {buffers:,}",
              "_" * width]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def predict(model: "Layer", x: FloatArray, batch_size: int = 256) -> FloatArray:
    """Outputs of ``model`` for ``x`` in eval mode, ``batch_size`` samples at a time.

    The model's training/eval mode is restored afterwards. ``x`` must already have the
    model's dtype and layout (e.g. ``(N, 1, 28, 28)`` float32).
    """
    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        outs = [model.forward(np.ascontiguousarray(x[i:i + batch_size]))
                for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("predict: x is empty")
    return np.concatenate(outs, axis=0)


def lenet5(num_classes: int = 10, in_channels: int = 1, seed: Optional[int] = 0,
           dtype: DTypeLike = np.float32) -> Sequential:
    """LeNet-5 with ReLU and max pooling for 28x28 inputs (61,706 parameters for 10 classes):
    conv5x5 1->6 (padding 2), ReLU, maxpool 2; conv5x5 6->16, ReLU, maxpool 2; flatten;
    linear 400->120, ReLU, 120->84, ReLU, 84->``num_classes``.

    Parameters
    ----------
    num_classes : int
        Outputs of the last layer.
    in_channels : int
        Channels of the 28x28 input images.
    seed : int or None
        Initialisation seed (same seed, same weights).
    dtype : numpy dtype
        float32 (default) or float64.

    Returns
    -------
    Sequential
        The initialised model; ``model.input_shape`` is ``(in_channels, 28, 28)``.
    """
    model = Sequential(
        Conv2d(in_channels, 6, 5, padding=2, dtype=dtype), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5, dtype=dtype), ReLU(), MaxPool2d(2),
        Flatten(),
        Linear(16 * 5 * 5, 120, dtype=dtype), ReLU(),
        Linear(120, 84, dtype=dtype), ReLU(),
        Linear(84, num_classes, dtype=dtype),
    )
    # Read by summary() and the zoo; Layer declares no such attribute (optional per model).
    model.input_shape = (in_channels, 28, 28)  # type: ignore[attr-defined]
    model.initialize(seed)
    return model


register_model_function("summary", summary)
register_model_function("predict", predict)
