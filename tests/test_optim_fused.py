"""The fused optimiser kernels (_kernels/optim.pyx) against the NumPy form of the same
update in cnncore.optim (run by switching the kernels off): the same bits, for SGD (plain,
momentum, Nesterov, weight decay) and Adam / AdamW, float32 and float64, sizes that are not
a multiple of the kernels' block, at 1, 2 and 3 threads; arrays the kernels cannot take
(non-contiguous) fall back to the NumPy form."""

import numpy as np
import pytest

from cnncore import optim, set_num_threads
from cnncore.layers import Parameter
from cnncore.optim import SGD, Adam, AdamW

SIZES = [(1,), (7, 3), (3, 16384 + 5), (64, 3, 3, 3)]
CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (SGD, dict(lr=0.01, weight_decay=0.1)),
    (Adam, dict(lr=1e-3)),
    (Adam, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)),
    (AdamW, dict(lr=1e-2, weight_decay=0.05)),
]


def run(cls, kwargs, dtype, fused, threads=1, steps=4, seed=0):
    """Parameters after ``steps`` updates with fresh random gradients each step."""
    set_num_threads(threads)
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal(s).astype(dtype), name=f"p{i}")
              for i, s in enumerate(SIZES)]
    opt = cls(params, **kwargs)
    saved = optim._fused_threads
    if not fused:
        optim._fused_threads = lambda *a: 0
    try:
        for _ in range(steps):
            for p in params:
                p.grad[...] = rng.standard_normal(p.shape).astype(dtype)
            opt.step()
    finally:
        optim._fused_threads = saved
    return [p.data.copy() for p in params], opt.state_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, kwargs", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_fused_update_equals_the_numpy_form(cls, kwargs, dtype):
    want, want_state = run(cls, kwargs, dtype, fused=False)
    for threads in (1, 2, 3):
        got, state = run(cls, kwargs, dtype, fused=True, threads=threads)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == dtype
        assert state.keys() == want_state.keys()
        for key in state:
            np.testing.assert_array_equal(state[key], want_state[key], err_msg=key)


def test_the_fused_kernel_runs(monkeypatch):
    """The comparison above is not vacuous: the kernel is called for contiguous arrays."""
    calls = []
    real = optim._fused_kernels.sgd_step
    monkeypatch.setattr(optim._fused_kernels, "sgd_step",
                        lambda *a: calls.append(a[0].size) or real(*a))
    p = Parameter(np.ones((4, 5), np.float32), "w")
    p.grad[...] = 1
    SGD([p], lr=0.5, momentum=0.9).step()
    assert calls == [20]
    np.testing.assert_array_equal(p.data, np.full((4, 5), 0.5, np.float32))


def test_non_contiguous_parameters_take_the_numpy_form(monkeypatch):
    monkeypatch.setattr(optim._fused_kernels, "sgd_step",
                        lambda *a: pytest.fail("fused kernel called on a strided array"))
    base = np.ones((4, 10), np.float32)
    p = Parameter(np.ones((4, 5), np.float32), "w")
    p.data = base[:, ::2]  # a strided view (the constructor would copy it)
    assert not p.data.flags.c_contiguous
    p.grad[...] = 2
    SGD([p], lr=0.25).step()
    np.testing.assert_array_equal(base[:, ::2], 0.5)
    np.testing.assert_array_equal(base[:, 1::2], 1.0)
