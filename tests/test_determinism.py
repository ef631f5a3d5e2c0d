"""Thread settings and determinism: every kernel gives bit-identical results with 1, 2 and 3
threads; cnncore.set_num_threads / get_num_threads / CNNCORE_NUM_THREADS; the OpenMP build."""

import os

import numpy as np
import pytest

import cnncore
from cnncore import functional as F

DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def _threads_even_for_small_inputs(monkeypatch):
    """functional runs small calls on fewer threads (they do not pay); these tests use small
    inputs, so lift that cap to make every requested thread really take part."""
    monkeypatch.setattr(F._common, "_MIN_FLOPS_PER_THREAD", 1)
    monkeypatch.setattr(F._common, "_MIN_BYTES_PER_THREAD", 1)


def test_small_calls_are_capped_but_not_below_one_thread(monkeypatch):
    monkeypatch.setattr(F._common, "_MIN_FLOPS_PER_THREAD", 1 << 21)
    assert F._common._threads(8, "t", tasks=100, flops=10) == 1
    assert F._common._threads(8, "t", tasks=100, flops=3 << 21) == 3
    assert F._common._threads(8, "t", tasks=2, flops=1 << 40) == 2
    assert F._common._threads(2, "t", tasks=100, flops=1 << 40) == 2


def _conv2d_args(g, dtype):
    # N=13 so that a split of the batch is uneven; groups=2 for the grouped code path
    x = g.standard_normal((13, 4, 11, 10)).astype(dtype)
    w = g.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = g.standard_normal(6).astype(dtype)
    kw = dict(stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    gy = g.standard_normal(F.conv2d(x, w, **kw).shape).astype(dtype)
    return x, w, b, gy, kw


def _conv2d_wide_args(g, dtype):
    # one image, many channels: parallelism cannot come from the batch
    x = g.standard_normal((1, 16, 12, 12)).astype(dtype)
    w = g.standard_normal((32, 16, 3, 3)).astype(dtype)
    gy = g.standard_normal((1, 32, 12, 12)).astype(dtype)
    return x, w, gy


def _depthwise_args(g, dtype):
    x = g.standard_normal((13, 8, 9, 9)).astype(dtype)
    w = g.standard_normal((16, 1, 3, 3)).astype(dtype)
    gy = g.standard_normal((13, 16, 5, 5)).astype(dtype)
    return x, w, gy, dict(stride=2, padding=1, groups=8)


def _conv1d_args(g, dtype):
    x = g.standard_normal((13, 6, 40)).astype(dtype)
    w = g.standard_normal((9, 2, 5)).astype(dtype)
    b = g.standard_normal(9).astype(dtype)
    kw = dict(stride=2, padding="same", groups=3)
    gy = g.standard_normal(F.conv1d(x, w, **kw).shape).astype(dtype)
    return x, w, b, gy, kw


def _pool_args(g, dtype):
    x = ((g.permutation(13 * 5 * 12 * 11) - 400) / 16).reshape(13, 5, 12, 11).astype(dtype)
    kw = dict(kernel_size=3, stride=2, padding=1)
    gy = g.standard_normal(F.max_pool2d(x, **kw).shape).astype(dtype)
    return x, gy, kw


def _act_args(g, dtype):
    x = (3 * g.standard_normal((13, 7, 33, 17))).astype(dtype)
    return x, g.standard_normal(x.shape).astype(dtype)


def _linear_args(g, dtype, n=13, fin=40, fout=30):
    return (g.standard_normal((n, fin)).astype(dtype), g.standard_normal((fout, fin)).astype(dtype),
            g.standard_normal(fout).astype(dtype), g.standard_normal((n, fout)).astype(dtype))


def _ce_args(g, dtype, dense):
    logits = (3 * g.standard_normal((257, 10))).astype(dtype)
    labels = g.integers(0, 10, size=257)
    if dense:
        t = g.random((257, 10))
        labels = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    return logits, labels


# name -> builder(g, dtype) returning a function of n_threads that runs the kernel
KERNELS = {}


def kernel(name):
    def register(builder):
        KERNELS[name] = builder
        return builder
    return register


@kernel("conv2d")
def _(g, d):
    x, w, b, _, kw = _conv2d_args(g, d)
    return lambda t: F.conv2d(x, w, b, **kw, n_threads=t)


@kernel("conv2d_backward")
def _(g, d):
    x, w, _, gy, kw = _conv2d_args(g, d)
    return lambda t: F.conv2d_backward(gy, x, w, **kw, n_threads=t)


@kernel("conv2d-wide")
def _(g, d):
    x, w, _ = _conv2d_wide_args(g, d)
    return lambda t: F.conv2d(x, w, padding="same", n_threads=t)


@kernel("conv2d_backward-wide")
def _(g, d):
    x, w, gy = _conv2d_wide_args(g, d)
    return lambda t: F.conv2d_backward(gy, x, w, padding="same", n_threads=t)


def _winograd_args(g, dtype):
    # 3x3, stride 1, >= 32 channels: the Winograd path; odd sizes, several sample blocks
    x = g.standard_normal((13, 32, 17, 22)).astype(dtype)
    w = g.standard_normal((32, 32, 3, 3)).astype(dtype)
    gy = g.standard_normal((13, 32, 17, 22)).astype(dtype)
    return x, w, gy


@kernel("conv2d-winograd")
def _(g, d):
    x, w, _ = _winograd_args(g, d)
    return lambda t: F.conv2d(x, w, padding=1, n_threads=t)


@kernel("conv2d_backward-winograd")
def _(g, d):
    x, w, gy = _winograd_args(g, d)
    return lambda t: F.conv2d_backward(gy, x, w, padding=1, n_threads=t)


@kernel("conv2d-depthwise")
def _(g, d):
    x, w, _, kw = _depthwise_args(g, d)
    return lambda t: F.conv2d(x, w, **kw, n_threads=t)


@kernel("conv2d_backward-depthwise")
def _(g, d):
    x, w, gy, kw = _depthwise_args(g, d)
    return lambda t: F.conv2d_backward(gy, x, w, **kw, n_threads=t)


def _depthwise3x3_args(g, dtype):
    # the 3x3 stride-1 plane kernels, channel multiplier 2 (_depthwise_args: stride 2)
    x = g.standard_normal((13, 6, 9, 10)).astype(dtype)
    w = g.standard_normal((12, 1, 3, 3)).astype(dtype)
    gy = g.standard_normal((13, 12, 9, 10)).astype(dtype)
    return x, w, gy, dict(padding=1, groups=6)


@kernel("conv2d-depthwise-3x3")
def _(g, d):
    x, w, _, kw = _depthwise3x3_args(g, d)
    return lambda t: F.conv2d(x, w, **kw, n_threads=t)


@kernel("conv2d_backward-depthwise-3x3")
def _(g, d):
    x, w, gy, kw = _depthwise3x3_args(g, d)
    return lambda t: F.conv2d_backward(gy, x, w, **kw, n_threads=t)


@kernel("conv1d")
def _(g, d):
    x, w, b, _, kw = _conv1d_args(g, d)
    return lambda t: F.conv1d(x, w, b, **kw, n_threads=t)


@kernel("conv1d_backward")
def _(g, d):
    x, w, _, gy, kw = _conv1d_args(g, d)
    return lambda t: F.conv1d_backward(gy, x, w, **kw, n_threads=t)


@kernel("max_pool2d")
def _(g, d):
    x, _, kw = _pool_args(g, d)
    return lambda t: F.max_pool2d(x, **kw, n_threads=t)


@kernel("max_pool2d_backward")
def _(g, d):
    x, gy, kw = _pool_args(g, d)
    return lambda t: F.max_pool2d_backward(gy, x, **kw, n_threads=t)


@kernel("max_pool2d-indices")
def _(g, d):
    x, _, kw = _pool_args(g, d)
    return lambda t: F.max_pool2d(x, **kw, return_indices=True, n_threads=t)


@kernel("max_pool2d_backward-indices")
def _(g, d):
    x, gy, kw = _pool_args(g, d)
    _, idx = F.max_pool2d(x, **kw, return_indices=True)
    return lambda t: F.max_pool2d_backward(gy, x, **kw, indices=idx, n_threads=t)


@kernel("max_pool2d-indices-ties")
def _(g, d):
    x = g.integers(-3, 4, size=(13, 5, 12, 11)).astype(d)  # repeated maxima
    return lambda t: F.max_pool2d(x, 3, 2, 1, return_indices=True, n_threads=t)


@kernel("avg_pool2d")
def _(g, d):
    x, _, kw = _pool_args(g, d)
    return lambda t: F.avg_pool2d(x, **kw, count_include_pad=False, n_threads=t)


@kernel("avg_pool2d_backward")
def _(g, d):
    x, gy, kw = _pool_args(g, d)
    return lambda t: F.avg_pool2d_backward(gy, x, **kw, n_threads=t)


@kernel("global_avg_pool2d")
def _(g, d):
    x, _ = _act_args(g, d)
    return lambda t: F.global_avg_pool2d(x, n_threads=t)


@kernel("global_avg_pool2d_backward")
def _(g, d):
    x, gy = _act_args(g, d)
    gy = gy[:, :, 0, 0].copy()
    return lambda t: F.global_avg_pool2d_backward(gy, x, n_threads=t)


def _activation(name):
    def forward(g, d):
        x, _ = _act_args(g, d)
        return lambda t: getattr(F, name)(x, n_threads=t)

    def backward(g, d):
        x, gy = _act_args(g, d)
        return lambda t: getattr(F, name + "_backward")(gy, x, n_threads=t)

    KERNELS[name] = forward
    KERNELS[name + "_backward"] = backward


for _name in ("relu", "leaky_relu", "sigmoid", "tanh"):
    _activation(_name)


@kernel("linear")
def _(g, d):
    x, w, b, _ = _linear_args(g, d)
    return lambda t: F.linear(x, w, b, n_threads=t)


@kernel("linear_backward")
def _(g, d):
    x, w, _, gy = _linear_args(g, d)
    return lambda t: F.linear_backward(gy, x, w, n_threads=t)


@kernel("linear-large")
def _(g, d):
    x, w, b, _ = _linear_args(g, d, 256, 384, 200)
    return lambda t: F.linear(x, w, b, n_threads=t)


@kernel("linear_backward-large")
def _(g, d):
    x, w, _, gy = _linear_args(g, d, 256, 384, 200)
    return lambda t: F.linear_backward(gy, x, w, n_threads=t)


@kernel("softmax")
def _(g, d):
    z, _ = _ce_args(g, d, False)
    return lambda t: F.softmax(z, n_threads=t)


@kernel("softmax-axis0")
def _(g, d):
    z, _ = _ce_args(g, d, False)
    return lambda t: F.softmax(z, axis=0, n_threads=t)


@kernel("softmax_cross_entropy")
def _(g, d):
    z, labels = _ce_args(g, d, False)
    return lambda t: F.softmax_cross_entropy(z, labels, n_threads=t)


@kernel("softmax_cross_entropy-dense")
def _(g, d):
    z, labels = _ce_args(g, d, True)
    return lambda t: F.softmax_cross_entropy(z, labels, n_threads=t)


def _bn_args(g, dtype):
    x = (g.standard_normal((6, 37, 5, 7)) + 3).astype(dtype)
    gamma, beta = g.uniform(0.5, 1.5, 37).astype(dtype), g.standard_normal(37).astype(dtype)
    gy = g.standard_normal(x.shape).astype(dtype)
    return x, gamma, beta, gy


@kernel("batch_norm")
def _(g, d):
    x, gamma, beta, _ = _bn_args(g, d)
    c = x.shape[1]

    def call(t):
        rm, rv = np.zeros(c, d), np.ones(c, d)
        return F.batch_norm(x, gamma, beta, rm, rv, True, n_threads=t) + (rm, rv)
    return call


@kernel("batch_norm_backward")
def _(g, d):
    x, gamma, beta, gy = _bn_args(g, d)
    _, mean, inv_std = F.batch_norm(x, gamma, beta, None, None, True)
    return lambda t: F.batch_norm_backward(gy, x, mean, inv_std, gamma, True, n_threads=t)


@kernel("add_relu")
def _(g, d):
    a, gy = _act_args(g, d)
    return lambda t: F.add_relu(a, gy, n_threads=t)


@kernel("mse_loss")
def _(g, d):
    pred = g.standard_normal((300, 40)).astype(d)
    target = g.standard_normal((300, 40)).astype(d)
    return lambda t: F.mse_loss(pred, target, n_threads=t)


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def assert_bit_identical(a, b, what):
    a, b = _outputs(a), _outputs(b)
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape, what
        assert np.array_equal(u, v), (
            f"{what}, output {i}: max difference {np.abs(u - v).max()} between thread counts")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(KERNELS))
def test_bit_identical_across_thread_counts(name, dtype, rng):
    call = KERNELS[name](rng, dtype)
    one = call(1)
    for out in _outputs(one):
        assert np.all(np.isfinite(out))
    for n in (2, 3, 4):
        assert_bit_identical(call(n), one, f"{name} with n_threads={n} vs 1")
    # the process-wide default is used when n_threads is None
    cnncore.set_num_threads(3)
    assert_bit_identical(call(None), one, f"{name} with set_num_threads(3)")
    assert_bit_identical(call(1), one, f"{name} repeated")


def test_more_threads_than_work(rng):
    x = rng.standard_normal((1, 1, 3, 3))
    w = rng.standard_normal((1, 1, 2, 2))
    gy = rng.standard_normal((1, 1, 2, 2))
    assert np.array_equal(F.conv2d(x, w, n_threads=8), F.conv2d(x, w, n_threads=1))
    for a, b in zip(F.conv2d_backward(gy, x, w, n_threads=8),
                    F.conv2d_backward(gy, x, w, n_threads=1)):
        assert np.array_equal(a, b)
    assert np.array_equal(F.relu(np.array([-1.0]), n_threads=8), [0.0])


# ----------------------------------------------------------------------------- settings

def test_set_and_get_num_threads(monkeypatch):
    monkeypatch.delenv("CNNCORE_NUM_THREADS", raising=False)
    cnncore.set_num_threads(None)
    default = cnncore.get_num_threads()
    assert isinstance(default, int) and default >= 1
    cnncore.set_num_threads(3)
    assert cnncore.get_num_threads() == 3
    cnncore.set_num_threads(1)
    assert cnncore.get_num_threads() == 1
    cnncore.set_num_threads(None)
    assert cnncore.get_num_threads() == default


def test_env_variable_sets_default(monkeypatch):
    cnncore.set_num_threads(None)
    monkeypatch.setenv("CNNCORE_NUM_THREADS", "3")
    assert cnncore.get_num_threads() == 3
    monkeypatch.setenv("CNNCORE_NUM_THREADS", "1")
    assert cnncore.get_num_threads() == 1
    cnncore.set_num_threads(2)  # an explicit setting wins over the environment
    assert cnncore.get_num_threads() == 2
    cnncore.set_num_threads(None)  # ... until it is cleared
    assert cnncore.get_num_threads() == 1


def test_env_variable_gives_same_results(monkeypatch, rng):
    x = rng.standard_normal((13, 4, 8, 8))
    w = rng.standard_normal((4, 4, 3, 3))
    gy = rng.standard_normal((13, 4, 6, 6))
    cnncore.set_num_threads(None)
    monkeypatch.setenv("CNNCORE_NUM_THREADS", "1")
    one = F.conv2d_backward(gy, x, w)
    monkeypatch.setenv("CNNCORE_NUM_THREADS", "3")
    assert_bit_identical(F.conv2d_backward(gy, x, w), one, "CNNCORE_NUM_THREADS=3")


@pytest.mark.parametrize("bad", [0, -1, -8])
def test_set_num_threads_rejects_non_positive(bad):
    cnncore.set_num_threads(2)
    with pytest.raises(ValueError):
        cnncore.set_num_threads(bad)
    assert cnncore.get_num_threads() == 2  # a rejected value changes nothing


N_THREADS_CALLS = {
    "relu-small": lambda t: F.relu(np.ones(3), n_threads=t),
    "relu-large": lambda t: F.relu(np.ones(200_000), n_threads=t),
    "sigmoid_backward-small": lambda t: F.sigmoid_backward(np.ones(3), np.ones(3), n_threads=t),
    "conv2d": lambda t: F.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), n_threads=t),
    "conv2d_backward": lambda t: F.conv2d_backward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)),
                                                   np.ones((1, 1, 2, 2)), n_threads=t),
    "max_pool2d": lambda t: F.max_pool2d(np.ones((1, 1, 4, 4)), 2, n_threads=t),
    "global_avg_pool2d": lambda t: F.global_avg_pool2d(np.ones((1, 1, 4, 4)), n_threads=t),
    "linear": lambda t: F.linear(np.ones((2, 3)), np.ones((4, 3)), n_threads=t),
    "softmax": lambda t: F.softmax(np.ones((2, 3)), n_threads=t),
    "mse_loss": lambda t: F.mse_loss(np.ones((2, 3)), np.zeros((2, 3)), n_threads=t),
}


@pytest.mark.parametrize("bad", [0, -2])
@pytest.mark.parametrize("name", list(N_THREADS_CALLS))
def test_kernel_rejects_non_positive_n_threads(name, bad):
    """Whatever the size of the input (small inputs may skip the parallel path)."""
    with pytest.raises(ValueError, match="n_threads"):
        N_THREADS_CALLS[name](bad)


@pytest.mark.parametrize("bad", [1.5, "2"])
@pytest.mark.parametrize("name", ["relu-large", "conv2d", "linear"])
def test_kernel_rejects_non_integer_n_threads(name, bad):
    with pytest.raises(TypeError):
        N_THREADS_CALLS[name](bad)


# ----------------------------------------------------------------------------- build

def test_show_config_mentions_openmp(capsys):
    returned = cnncore.show_config()
    text = capsys.readouterr().out + (returned if isinstance(returned, str) else "")
    assert "openmp" in text.lower()
    assert cnncore.__version__ in text


def test_openmp_enabled():
    if os.environ.get("CNNCORE_NO_OPENMP"):
        pytest.skip("CNNCORE_NO_OPENMP is set: a serial build is expected")
    from cnncore._kernels import _openmp_helpers
    assert _openmp_helpers.openmp_enabled() is True
