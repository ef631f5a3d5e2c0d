"""The three implementations timed side by side, as zero-argument callables.

For every problem the inputs are made once (seeded NumPy arrays); each backend wraps them
(PyTorch: ``torch.from_numpy``, sharing the memory) and returns ``{"fwd": fn, "bwd": fn}``.

- ``cnncore``: :mod:`cnncore.functional`, ``n_threads=threads``.
- ``reference``: :mod:`cnncore.reference` (NumPy/einsum); its BLAS is limited to the same
  thread count by the caller (threadpoolctl).
- ``torch``: forward under ``torch.no_grad()`` (no graph is recorded, as cnncore records
  none). Backward, ``torch_backward="aten"`` (the default): the ATen backward operator
  that autograd itself dispatches to, called directly on precomputed inputs -- for a
  convolution ``aten.convolution_backward`` with ``output_mask=[True, True, True]``
  (input, weight and bias gradients, exactly what ``cnncore.functional.conv2d_backward``
  returns); for max pooling ``aten.max_pool2d_with_indices_backward`` with the indices
  saved by the forward; for average pooling ``aten.avg_pool2d_backward``.
  Max pooling is timed as training runs it, in every backend: the forward saves the
  argmax indices (``aten.max_pool2d_with_indices``; ``max_pool2d(..., return_indices=True)``)
  and the backward scatters through them (``max_pool2d_backward(..., indices=...)``).
  ``torch_backward="autograd"`` instead times ``torch.autograd.grad`` on a forward graph
  built once with ``retain_graph=True``, which adds the autograd engine's overhead
  (tens of microseconds per call).
"""

import zlib

import numpy as np

__all__ = ["import_torch", "conv_arrays", "conv_calls", "pool_arrays", "pool_calls",
           "to_numpy", "rel_error"]


def import_torch():
    """``torch`` if it can be imported, else None. PyTorch is never a dependency."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install raising OSError and the like
        return None
    return torch


def _rng(name, seed=0):
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def conv_arrays(shape, dtype, seed=0):
    """Seeded ``x``, ``weight`` (scaled by ``1/sqrt(fan_in)``), ``bias`` and ``grad_out``
    for a :class:`~cnncore.bench.shapes.ConvShape`."""
    rng = _rng(shape.name, seed)
    fan_in = shape.w_shape[1] * shape.k * shape.k
    x = rng.standard_normal(shape.x_shape).astype(dtype)
    w = (rng.standard_normal(shape.w_shape) / np.sqrt(fan_in)).astype(dtype)
    b = rng.standard_normal(shape.c_out).astype(dtype)
    gy = rng.standard_normal(shape.y_shape).astype(dtype)
    return {"x": x, "w": w, "b": b, "gy": gy}


def conv_calls(backend, shape, arrays, threads, torch=None, torch_backward="aten"):
    """``{"fwd": fn, "bwd": fn}`` for one backend (``"cnncore"``, ``"reference"`` or
    ``"torch"``) on a conv problem; each ``fn()`` returns the op's outputs."""
    x, w, b, gy = arrays["x"], arrays["w"], arrays["b"], arrays["gy"]
    s, p, g = shape.stride, shape.padding, shape.groups
    if backend in ("cnncore", "reference"):
        if backend == "cnncore":
            from .. import functional as M
        else:
            from .. import reference as M
        return {
            "fwd": lambda: M.conv2d(x, w, b, s, p, 1, g, n_threads=threads),
            "bwd": lambda: M.conv2d_backward(gy, x, w, s, p, 1, g, n_threads=threads),
        }
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}")
    tf = torch.nn.functional
    xt, wt, bt, gyt = (torch.from_numpy(a) for a in (x, w, b, gy))

    def fwd():
        with torch.no_grad():
            return tf.conv2d(xt, wt, bt, s, p, 1, g)

    if torch_backward == "autograd":
        xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (xt, wt, bt))
        y = tf.conv2d(xr, wr, br, s, p, 1, g)

        def bwd():
            return torch.autograd.grad(y, (xr, wr, br), gyt, retain_graph=True)
    else:
        op = torch.ops.aten.convolution_backward

        def bwd():
            return op(gyt, xt, wt, [shape.c_out], [s, s], [p, p], [1, 1], False, [0, 0], g,
                      [True, True, True])
    return {"fwd": fwd, "bwd": bwd}


def pool_arrays(shape, dtype, seed=0):
    """Seeded ``x`` and ``grad_out`` for a :class:`~cnncore.bench.shapes.PoolShape`."""
    rng = _rng(shape.name, seed)
    return {"x": rng.standard_normal(shape.x_shape).astype(dtype),
            "gy": rng.standard_normal(shape.y_shape).astype(dtype)}


def pool_calls(backend, shape, arrays, threads, torch=None, torch_backward="aten"):
    """``{"fwd": fn, "bwd": fn}`` for one backend on a pooling problem."""
    x, gy = arrays["x"], arrays["gy"]
    k, s = shape.k, shape.stride
    if backend in ("cnncore", "reference"):
        if backend == "cnncore":
            from .. import functional as M
        else:
            from .. import reference as M
        if shape.kind == "max":
            _, idx = M.max_pool2d(x, k, s, 0, return_indices=True, n_threads=threads)
            return {"fwd": lambda: M.max_pool2d(x, k, s, 0, return_indices=True,
                                                n_threads=threads),
                    "bwd": lambda: M.max_pool2d_backward(gy, x, k, s, 0, indices=idx,
                                                         n_threads=threads)}
        return {"fwd": lambda: M.avg_pool2d(x, k, s, 0, n_threads=threads),
                "bwd": lambda: M.avg_pool2d_backward(gy, x, k, s, 0, n_threads=threads)}
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}")
    tf = torch.nn.functional
    xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
    pool = tf.max_pool2d if shape.kind == "max" else tf.avg_pool2d

    def fwd():
        with torch.no_grad():
            if shape.kind == "max":
                return torch.ops.aten.max_pool2d_with_indices(xt, [k, k], [s, s], [0, 0],
                                                              [1, 1], False)
            return pool(xt, k, s)

    if torch_backward == "autograd":
        xr = xt.detach().clone().requires_grad_(True)
        y = pool(xr, k, s)

        def bwd():
            return torch.autograd.grad(y, (xr,), gyt, retain_graph=True)[0]
    elif shape.kind == "max":
        _, idx = torch.ops.aten.max_pool2d_with_indices(xt, [k, k], [s, s], [0, 0], [1, 1],
                                                        False)
        op = torch.ops.aten.max_pool2d_with_indices_backward

        def bwd():
            return op(gyt, xt, [k, k], [s, s], [0, 0], [1, 1], False, idx)
    else:
        op = torch.ops.aten.avg_pool2d_backward

        def bwd():
            return op(gyt, xt, [k, k], [s, s], [0, 0], False, True, None)
    return {"fwd": fwd, "bwd": bwd}


def to_numpy(result):
    """An op's output (array, tensor, or tuple of them) as a tuple of NumPy arrays."""
    if not isinstance(result, (tuple, list)):
        result = (result,)
    out = []
    for r in result:
        if hasattr(r, "detach"):
            r = r.detach().cpu().numpy()
        out.append(np.asarray(r))
    return tuple(out)


def rel_error(result, expected):
    """``max |a - b| / max |b|`` over the arrays of two op outputs (0 when both are zero);
    ``inf`` when the shapes differ."""
    a, b = to_numpy(result), to_numpy(expected)
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for u, v in zip(a, b):
        if u.shape != v.shape:
            return float("inf")
        if not u.size:
            continue
        v64 = v.astype(np.float64)
        scale = float(np.max(np.abs(v64))) or 1.0
        worst = max(worst, float(np.max(np.abs(u.astype(np.float64) - v64))) / scale)
    return worst
