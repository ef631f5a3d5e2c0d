"""Property-based tests (hypothesis) of every public function of ``cnncore.functional`` and of
the layers, against ``cnncore.reference``.

Random geometry (empty batch, 1x1 images, kernel = input, stride > kernel, rectangular
everything, groups, dilation), input dtypes (float32/64; float16, ints, bool and big-endian
floats, which are converted as NumPy would; complex, object and strings, which must be a
TypeError), layouts (non-contiguous, negative strides, read-only, Fortran order) and
NaN/Inf values. The outcome is the reference's answer (values and gradients) or a
ValueError/TypeError that names the function, never a crash or a silently wrong result.

Two profiles: the default (CI) one runs a few hundred examples in all; ``pytest -m fuzz``
runs the same properties with ``*_long`` twins of >= 10 000 examples in all.
"""

import functools

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cnncore.functional as F  # noqa: E402
from cnncore import reference as R  # noqa: E402
from cnncore import layers as L  # noqa: E402

CI = settings(max_examples=30, deadline=None, derandomize=True, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LONG = settings(max_examples=1200, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def prop(**strategies):
    """Define ``test_<name>`` (CI profile) and ``test_<name>_long`` (``-m fuzz``)."""

    def deco(fn):
        ci = CI(given(**strategies)(fn))
        long = pytest.mark.fuzz(LONG(given(**strategies)(fn)))
        long.__name__ = fn.__name__ + "_long"
        globals()[fn.__name__ + "_long"] = long
        return ci

    return deco


# ---------------------------------------------------------------------- inputs
CONVERTED = ["float32", "float64", "float16", "int32", "uint8", "bool", ">f4", ">f8"]
REFUSED = ["complex64", "complex128", "object", "U3"]
LAYOUTS = ["c", "strided", "negative", "readonly", "fortran"]


def native_float(dtypes):
    """The float dtype a call computes in, as NumPy would promote (our rule: the float32 or
    float64 of the arguments, else float32; float16, ints and bool are cast to it)."""
    floats = {np.dtype(d).newbyteorder("=") for d in dtypes
              if np.dtype(d).kind == "f" and np.dtype(d).itemsize >= 4}
    assert len(floats) <= 1
    return floats.pop() if floats else np.dtype(np.float32)


def make(rng, shape, dtype="float64", layout="c", special=0.0, scale=1.0):
    """A float64 array of ``shape`` (with a fraction ``special`` of NaN/Inf), then given
    ``dtype`` and ``layout``. Returns ``(array passed to cnncore, exact float64 values)``."""
    v = rng.standard_normal(shape) * scale
    if special and v.size:
        mask = rng.random(shape) < special
        v[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
    dt = np.dtype(dtype)
    if dt.kind == "b":
        v = (v > 0).astype(np.float64)
    elif dt.kind in "iu":
        v = np.nan_to_num(np.round(v * 3), nan=0, posinf=5, neginf=-5)
        if dt.kind == "u":
            v = np.abs(v)
    if dt.kind in "biu" or dt == np.float16:
        a = v.astype(dt)
        v = a.astype(np.float64)
    elif dt.kind == "f":
        a = v.astype(dt)
        v = a.astype(np.float64)
    elif dt.kind == "U":
        a = v.astype(dt)
    else:
        a = v.astype(dt)
    if layout == "strided":
        big = np.zeros(tuple(2 * n for n in shape), dtype=a.dtype)
        big[tuple(slice(None, None, 2) for _ in shape)] = a
        a = big[tuple(slice(None, None, 2) for _ in shape)]
    elif layout == "negative":
        a = np.ascontiguousarray(np.flip(a))[tuple(slice(None, None, -1) for _ in shape)]
    elif layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a, v


def tol(dtype):
    return dict(rtol=2e-3, atol=2e-3) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)


def close(got, want, dtype, exact_nan=True, scale=1.0):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == dtype, (got.dtype, dtype)
    t = tol(dtype)
    finite = np.isfinite(want)
    if exact_nan:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    else:  # sums of NaN/Inf: a non-finite reference value must be non-finite here too
        assert not np.isfinite(got[~finite]).any()
    np.testing.assert_allclose(got[finite], want[finite], rtol=t["rtol"],
                               atol=t["atol"] * max(1.0, scale))


def outcome(name, fast, ref):
    """Run cnncore and the reference. cnncore may refuse the call with a ValueError or
    TypeError naming ``name`` (returns ``(None, None)``); if it answers, the reference must
    answer too, and both results are returned for comparison."""
    try:
        got = fast()
    except (ValueError, TypeError) as e:
        assert name in str(e), str(e)
        event(f"{name}: refused ({type(e).__name__})")
        return None, None
    event(f"{name}: compared with the reference")
    return got, ref()


def refused(name, call):
    with pytest.raises(TypeError) as info:
        call()
    assert name in str(info.value) and not isinstance(info.value, ValueError)


dtype_st = st.sampled_from(CONVERTED)
layout_st = st.sampled_from(LAYOUTS)
special_st = st.sampled_from([0.0, 0.0, 0.0, 0.1])
seed_st = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------- convolutions
conv_geometry = st.fixed_dictionaries({
    "n": st.integers(0, 3), "groups": st.integers(1, 3), "cin_g": st.integers(1, 3),
    "cout_g": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 9),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 4),
    "sw": st.integers(1, 4), "ph": st.integers(0, 2), "pw": st.integers(0, 2),
    "dh": st.integers(1, 3), "dw": st.integers(1, 3), "bias": st.booleans(),
    "kernel_is_input": st.booleans(),
})


@prop(g=conv_geometry, dx=dtype_st, dw=st.sampled_from(["float32", "float64", "int32", "float16"]),
      layout=layout_st, special=special_st, seed=seed_st)
def test_conv2d(g, dx, dw, layout, special, seed):
    rng = np.random.default_rng(seed)
    if g["kernel_is_input"]:
        g = dict(g, kh=g["h"], kw=g["w"], ph=0, pw=0, dh=1, dw=1)
    cin, cout = g["groups"] * g["cin_g"], g["groups"] * g["cout_g"]
    if np.dtype(dx).kind == "f" and np.dtype(dw).kind == "f" and min(np.dtype(dx).itemsize,
                                                                     np.dtype(dw).itemsize) >= 4:
        dw = dx  # float32 with float64 is refused (tested in test_validation.py)
    dtype = native_float([dx, dw])
    x, xv = make(rng, (g["n"], cin, g["h"], g["w"]), dx, layout, special)
    w, wv = make(rng, (cout, g["cin_g"], g["kh"], g["kw"]), dw)
    b, bv = make(rng, (cout,), dw) if g["bias"] else (None, None)
    kw = dict(stride=(g["sh"], g["sw"]), padding=(g["ph"], g["pw"]),
              dilation=(g["dh"], g["dw"]), groups=g["groups"])
    y, want = outcome("conv2d", lambda: F.conv2d(x, w, b, **kw),
                      lambda: R.conv2d(xv.astype(dtype), wv.astype(dtype),
                                       None if b is None else bv.astype(dtype), **kw))
    if y is None:
        return
    close(y, R.conv2d(xv, wv, bv, **kw).astype(dtype), dtype, exact_nan=False,
          scale=g["cin_g"] * g["kh"] * g["kw"])
    if special:
        return  # gradients of NaN/Inf inputs: only the forward values are compared
    gy, gyv = make(rng, y.shape, dtype.name, layout)
    got = F.conv2d_backward(gy, x, w, **kw)
    ref = R.conv2d_backward(gyv, xv, wv, **kw)
    for a, r in zip(got, ref):
        close(a, r.astype(dtype), dtype, scale=max(1, np.abs(r).max(initial=0)))


@prop(n=st.integers(0, 3), groups=st.integers(1, 2), cin_g=st.integers(1, 3),
      cout_g=st.integers(1, 3), length=st.integers(1, 12), k=st.integers(1, 5),
      s=st.integers(1, 4), p=st.sampled_from([0, 1, 2, "valid", "same", "full"]),
      d=st.integers(1, 3), dx=dtype_st, layout=layout_st, seed=seed_st)
def test_conv1d(n, groups, cin_g, cout_g, length, k, s, p, d, dx, layout, seed):
    rng = np.random.default_rng(seed)
    dtype = native_float([dx])
    x, xv = make(rng, (n, groups * cin_g, length), dx, layout)
    w, wv = make(rng, (groups * cout_g, cin_g, k), dtype.name)
    kw = dict(stride=s, padding=p, dilation=d, groups=groups)
    y, want = outcome("conv1d", lambda: F.conv1d(x, w, **kw),
                      lambda: R.conv1d(xv.astype(dtype), wv, **kw))
    if y is None:
        return
    close(y, R.conv1d(xv, wv, **kw).astype(dtype), dtype, scale=cin_g * k)
    gy, gyv = make(rng, y.shape, dtype.name)
    for a, r in zip(F.conv1d_backward(gy, x, w, **kw), R.conv1d_backward(gyv, xv, wv, **kw)):
        close(a, r.astype(dtype), dtype, scale=max(1, np.abs(r).max(initial=0)))


# ---------------------------------------------------------------------- pooling
pool_geometry = st.fixed_dictionaries({
    "n": st.integers(0, 2), "c": st.integers(1, 3), "h": st.integers(1, 9),
    "w": st.integers(1, 9), "kh": st.integers(1, 4), "kw": st.integers(1, 4),
    "stride": st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))),
    "ph": st.integers(0, 1), "pw": st.integers(0, 1),
})


@prop(g=pool_geometry, dx=dtype_st, layout=layout_st, special=special_st, seed=seed_st,
      include_pad=st.booleans())
def test_pooling(g, dx, layout, special, seed, include_pad):
    rng = np.random.default_rng(seed)
    dtype = native_float([dx])
    x, xv = make(rng, (g["n"], g["c"], g["h"], g["w"]), dx, layout, special)
    k, pad = (g["kh"], g["kw"]), (g["ph"], g["pw"])
    for name, fast, ref, fast_b, ref_b, extra in [
            ("max_pool2d", F.max_pool2d, R.max_pool2d, F.max_pool2d_backward,
             R.max_pool2d_backward, {}),
            ("avg_pool2d", F.avg_pool2d, R.avg_pool2d, F.avg_pool2d_backward,
             R.avg_pool2d_backward, {"count_include_pad": include_pad})]:
        y, want = outcome(name, lambda: fast(x, k, g["stride"], pad, **extra),
                          lambda: ref(xv.astype(dtype), k, g["stride"], pad, **extra))
        if y is None:
            continue
        close(y, want, dtype, exact_nan=(name == "max_pool2d"))
        if special:
            continue
        gy, gyv = make(rng, y.shape, dtype.name, layout)
        close(fast_b(gy, x, k, g["stride"], pad, **extra),
              ref_b(gyv.astype(dtype), xv.astype(dtype), k, g["stride"], pad, **extra),
              dtype)
    y, want = outcome("global_avg_pool2d", lambda: F.global_avg_pool2d(x),
                      lambda: R.global_avg_pool2d(xv.astype(dtype)))
    if y is not None:
        close(y, want, dtype, exact_nan=False)
        gy, gyv = make(rng, y.shape, dtype.name)
        close(F.global_avg_pool2d_backward(gy, x),
              R.global_avg_pool2d_backward(gyv.astype(dtype), xv.astype(dtype)), dtype)


# ---------------------------------------------------------------------- elementwise
@prop(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), dx=dtype_st,
      layout=layout_st, special=st.sampled_from([0.0, 0.2]), seed=seed_st,
      # slope 0 included: leaky_relu(-inf, 0) is -inf * 0 = NaN, as in NumPy and PyTorch
      # (it used to run relu's kernel and give 0)
      slope=st.one_of(st.just(0.0), st.floats(-2, 2, allow_nan=False)))
def test_activations(shape, dx, layout, special, seed, slope):
    rng = np.random.default_rng(seed)
    dtype = native_float([dx])
    x, xv = make(rng, tuple(shape), dx, layout, special)
    gy, gyv = make(rng, tuple(shape), dx, layout)
    xd, gyd = xv.astype(dtype), gyv.astype(dtype)
    for name, args in [("relu", ()), ("sigmoid", ()), ("tanh", ()),
                       ("leaky_relu", (slope,))]:
        close(getattr(F, name)(x, *args), getattr(R, name)(xd, *args), dtype)
        close(getattr(F, name + "_backward")(gy, x, *args),
              getattr(R, name + "_backward")(gyd, xd, *args), dtype)


# ---------------------------------------------------------------------- dense and losses
@prop(n=st.integers(0, 4), n_in=st.integers(1, 6), n_out=st.integers(1, 6), bias=st.booleans(),
      dx=dtype_st, layout=layout_st, special=special_st, seed=seed_st)
def test_linear(n, n_in, n_out, bias, dx, layout, special, seed):
    rng = np.random.default_rng(seed)
    dtype = native_float([dx])
    x, xv = make(rng, (n, n_in), dx, layout, special)
    w, wv = make(rng, (n_out, n_in), dtype.name, layout)
    b, bv = make(rng, (n_out,), dtype.name) if bias else (None, None)
    y, want = outcome("linear", lambda: F.linear(x, w, b),
                      lambda: R.linear(xv.astype(dtype), wv.astype(dtype),
                                       None if b is None else bv.astype(dtype)))
    close(y, R.linear(xv, wv, bv).astype(dtype), dtype, exact_nan=False, scale=n_in)
    if special:
        return
    gy, gyv = make(rng, y.shape, dtype.name)
    for a, r in zip(F.linear_backward(gy, x, w), R.linear_backward(gyv, xv, wv)):
        close(a, r.astype(dtype), dtype, scale=max(1, n))


@prop(n=st.integers(1, 5), k=st.integers(1, 6), dx=dtype_st, layout=layout_st,
      one_hot=st.booleans(), seed=seed_st, scale=st.sampled_from([1.0, 30.0, 1e4]))
def test_softmax_and_losses(n, k, dx, layout, one_hot, seed, scale):
    rng = np.random.default_rng(seed)
    dtype = native_float([dx])
    z, zv = make(rng, (n, k), dx, layout, scale=scale)
    zd = zv.astype(dtype)
    close(F.softmax(z), R.softmax(zd), dtype)
    labels = rng.integers(0, k, n)
    target = np.eye(k, dtype=dtype)[labels] if one_hot else labels
    loss, grad = F.softmax_cross_entropy(z, target)
    rloss, rgrad = R.softmax_cross_entropy(zd, target)
    close(np.asarray(loss), np.asarray(rloss), dtype, scale=scale)
    close(grad, rgrad, dtype)
    t, tv = make(rng, (n, k), dtype.name)
    loss, grad = F.mse_loss(z, t)
    rloss, rgrad = R.mse_loss(zd, tv.astype(dtype))
    close(np.asarray(loss), np.asarray(rloss), dtype, scale=scale * scale)
    close(grad, rgrad, dtype, scale=scale)


# ---------------------------------------------------------------------- refused dtypes
@prop(bad=st.sampled_from(REFUSED), which=st.integers(0, 1), seed=seed_st)
def test_refused_dtypes_are_type_errors(bad, which, seed):
    rng = np.random.default_rng(seed)

    def arrays(*shapes):
        out = [make(rng, s)[0].astype(np.float32) for s in shapes]
        out[which % len(out)] = out[which % len(out)].astype(bad)
        return out

    refused("conv2d", lambda: F.conv2d(*arrays((1, 2, 4, 4), (3, 2, 3, 3))))
    refused("conv1d", lambda: F.conv1d(*arrays((1, 2, 6), (3, 2, 3))))
    refused("linear", lambda: F.linear(*arrays((2, 3), (4, 3))))
    refused("max_pool2d", lambda: F.max_pool2d(*arrays((1, 1, 4, 4)), 2))
    refused("avg_pool2d", lambda: F.avg_pool2d(*arrays((1, 1, 4, 4)), 2))
    refused("relu", lambda: F.relu(*arrays((3,))))
    refused("sigmoid_backward", lambda: F.sigmoid_backward(*arrays((3,), (3,))))
    refused("softmax", lambda: F.softmax(*arrays((2, 3))))
    refused("mse_loss", lambda: F.mse_loss(*arrays((2, 3), (2, 3))))


# ---------------------------------------------------------------------- norms
@prop(n=st.integers(1, 4), c=st.integers(1, 4), hw=st.integers(1, 5), dx=dtype_st,
      layout=layout_st, training=st.booleans(), size=st.integers(1, 5), seed=seed_st)
def test_norms(n, c, hw, dx, layout, training, size, seed):
    rng = np.random.default_rng(seed)
    dtype = native_float([dx])
    x, xv = make(rng, (n, c, hw, hw), dx, layout)
    xd = xv.astype(dtype)
    gamma, beta = rng.random(c).astype(dtype) + 0.5, rng.standard_normal(c).astype(dtype)
    mean_f, var_f = np.zeros(c, dtype), np.ones(c, dtype)
    mean_r, var_r = mean_f.copy(), var_f.copy()
    got, want = outcome("batch_norm",
                        lambda: F.batch_norm(x, gamma, beta, mean_f, var_f, training=training),
                        lambda: R.batch_norm(xd, gamma, beta, mean_r, var_r, training=training))
    if got is None:
        return
    close(got[0], want[0], dtype, scale=10)
    close(mean_f, mean_r, dtype)
    close(var_f, var_r, dtype)
    gy, gyv = make(rng, (n, c, hw, hw), dtype.name)
    # (y, mean, inv_std) -> backward(grad_out, x, mean, inv_std, gamma, training)
    for a, r in zip(F.batch_norm_backward(gy, x, *got[1:], gamma, training=training),
                    R.batch_norm_backward(gyv.astype(dtype), xd, *want[1:], gamma,
                                          training=training)):
        close(a, r, dtype, scale=10)
    close(F.local_response_norm(x, size), R.local_response_norm(xd, size), dtype)
    keep, mask = F.dropout(x, 0.5, np.random.default_rng(seed))
    rkeep, rmask = R.dropout(xd, 0.5, np.random.default_rng(seed))
    close(keep, rkeep, dtype)
    close(F.dropout_backward(gy, mask), R.dropout_backward(gyv.astype(dtype), rmask), dtype)
    close(F.local_response_norm_backward(gy, x, size),
          R.local_response_norm_backward(gyv.astype(dtype), xd, size), dtype)


# ---------------------------------------------------------------------- layers
def _layer_cases(draw_int, c, hw):
    return [
        lambda: L.Conv2d(c, draw_int(1, 4), (draw_int(1, 3), draw_int(1, 3)),
                         stride=draw_int(1, 3), padding=draw_int(0, 1)),
        lambda: L.Conv2d(c, c, 3, padding="same", groups=c, bias=False),
        lambda: L.MaxPool2d(draw_int(1, 3), stride=draw_int(1, 3)),
        lambda: L.AvgPool2d(draw_int(1, 3), stride=draw_int(1, 3), padding=0),
        lambda: L.GlobalAvgPool2d(), lambda: L.ReLU(), lambda: L.Sigmoid(), lambda: L.Tanh(),
        lambda: L.LeakyReLU(0.1), lambda: L.BatchNorm2d(c), lambda: L.LocalResponseNorm(3),
        lambda: L.Sequential(L.Flatten(), L.Linear(c * hw * hw, draw_int(1, 4))),
    ]


@prop(n=st.integers(1, 3), c=st.integers(1, 3), hw=st.integers(1, 6), which=st.integers(0, 11),
      dtype=st.sampled_from(["float32", "float64"]), layout=layout_st, seed=seed_st)
def test_layers_match_their_gradients(n, c, hw, which, dtype, layout, seed):
    """Every layer: backward equals the finite-difference derivative of forward (float64),
    through any input layout; a dtype it was not built for is a TypeError naming it."""
    rng = np.random.default_rng(seed)
    layer = _layer_cases(lambda lo, hi: int(rng.integers(lo, hi + 1)), c, hw)[which]()
    layer.initialize(int(rng.integers(1000))).astype(np.float64)
    x, xv = make(rng, (n, c, hw, hw), "float64", layout)
    names = [type(layer).__name__] + [type(c).__name__ for _, c in layer.named_layers()] + \
        list(F.__all__)  # the layer, or the kernel it calls, is named
    try:
        y = layer.forward(x)
    except ValueError as e:  # e.g. a kernel larger than the padded input
        assert any(name in str(e) for name in names), str(e)
        return
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)
    v = rng.standard_normal(xv.shape)
    eps = 1e-6
    f = lambda t: float((layer.forward(xv + t * v) * gy).sum())  # noqa: E731
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    if not isinstance(layer, (L.MaxPool2d,)):  # max has kinks; checked against reference
        np.testing.assert_allclose((gx * v).sum(), numeric, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError) as info:
        layer.forward(x.astype(np.complex128))
    assert any(name in str(info.value) for name in names), str(info.value)
