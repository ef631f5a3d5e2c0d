"""ONNX Runtime as the reference engine of the whole-network bench.

:func:`ort_session` exports a cnncore model with :func:`cnncore.onnx.export` (in memory) and
returns a callable that runs it in ONNX Runtime's CPU provider, so that ``python -m
cnncore.bench --ops models`` can time cnncore's eval forward next to the engine a user would
deploy with::

    from cnncore import zoo
    from cnncore.onnx.bench import ort_available, ort_session

    model = zoo.resnet(18, variant="cifar").eval()
    if ort_available():
        run = ort_session(model, threads=2)   # input shape: model.input_shape
        y = run(x)                            # x: (N, 3, 32, 32) float32 -> (N, 10)

:func:`compare` times both side by side (medians after warm-up, the calls interleaved).
"""

import time

import numpy as np

from ._common import require_onnxruntime
from .export import to_model_proto

__all__ = ["ort_available", "ort_session", "compare"]


def ort_available():
    """True when both onnx and onnxruntime can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_session(model, input_shape=None, threads=1, optimization="all"):
    """A callable ``run(x) -> y`` that evaluates ``model`` (eval-mode semantics) in ONNX
    Runtime.

    Parameters
    ----------
    model : Layer
        Anything :func:`cnncore.onnx.export` accepts; it is exported once, here.
    input_shape : tuple, optional
        One sample's shape (default ``model.input_shape``); the batch size is free.
    threads : int
        ``intra_op_num_threads`` (inter-op parallelism is off: one thread pool, as cnncore).
    optimization : {'all', 'extended', 'basic', 'none'}
        ONNX Runtime's graph optimisation level ('all': BatchNorm folded into Conv, fused
        activations, NCHWc layouts, as deployed).

    Returns
    -------
    callable
        ``run(x)`` with ``x`` a float array ``(N, *input_shape)`` of the model's dtype;
        returns the output array (a tuple for a Graph with several outputs). ``run.session``
        is the ``onnxruntime.InferenceSession``.
    """
    ort = require_onnxruntime("cnncore.onnx.bench.ort_session")
    proto = to_model_proto(model, input_shape=input_shape)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    try:
        so.graph_optimization_level = levels[optimization]
    except KeyError:
        raise ValueError(f"ort_session: optimization must be one of {sorted(levels)}, "
                         f"got {optimization!r}") from None
    session = ort.InferenceSession(proto.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    in_name = session.get_inputs()[0].name
    n_out = len(session.get_outputs())

    def run(x):
        outs = session.run(None, {in_name: np.ascontiguousarray(x)})
        return outs[0] if n_out == 1 else tuple(outs)

    run.session = session
    return run


def compare(model, batch_size, threads, input_shape=None, repeats=10, warmup=2, seed=0):
    """Median seconds of cnncore's eval forward and of ONNX Runtime on the same batch, the
    calls interleaved (one of each per repeat) so that both see the same machine load.

    Returns ``{"cnncore": s, "onnxruntime": s, "ratio": cnncore / onnxruntime,
    "max_rel_diff": max |difference| / max |output|}``.
    """
    from .. import _config
    input_shape = tuple(input_shape if input_shape is not None else model.input_shape)
    dtype = model.dtype or np.float32
    x = np.random.default_rng(seed).standard_normal((batch_size,) + input_shape).astype(dtype)
    run = ort_session(model, input_shape, threads=threads)
    old = _config._num_threads  # None: the default, restored as such
    _config.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        y_c, y_o = model.forward(x), run(x)
        for _ in range(warmup):
            model.forward(x)
            run(x)
        tc, to = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.forward(x)
            t1 = time.perf_counter()
            run(x)
            t2 = time.perf_counter()
            tc.append(t1 - t0)
            to.append(t2 - t1)
    finally:
        _config.set_num_threads(old)
        model.train(was_training)
    c, o = float(np.median(tc)), float(np.median(to))
    scale = float(np.abs(y_o).max()) or 1.0
    return {"cnncore": c, "onnxruntime": o, "ratio": c / o,
            "max_rel_diff": float(np.abs(y_c - y_o).max()) / scale}
