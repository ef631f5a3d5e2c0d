"""Test helpers: tolerance-aware comparison and a central-difference gradient checker.

Nothing here catches or hides an error: every helper either returns a value or raises
``AssertionError`` (via :mod:`numpy.testing`) so that a wrong kernel fails the test.
"""

import numpy as np

# rtol, and atol per unit of magnitude of the expected values.
TOLERANCES = {
    np.dtype(np.float32): (1e-4, 1e-4),
    np.dtype(np.float64): (1e-10, 1e-10),
}


def as_float64(*arrays):
    """float64 copies (None stays None): the reference is evaluated in float64 so that the
    comparison measures the kernel's rounding, not the reference's."""
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def assert_close(actual, expected, dtype, err_msg=""):
    """``actual`` must have ``dtype`` and the shape of ``expected`` and agree with it within
    the dtype's tolerance; atol is scaled with the magnitude of ``expected``."""
    dtype = np.dtype(dtype)
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == dtype, f"{err_msg}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, (
        f"{err_msg}: shape {actual.shape}, expected {expected.shape}")
    assert np.all(np.isfinite(actual)) or not np.all(np.isfinite(expected)), (
        f"{err_msg}: non-finite values in the result")
    rtol, atol_unit = TOLERANCES[dtype]
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol_unit * scale, err_msg=err_msg)


def numerical_gradient(fn, args, index, weight, eps=1e-6):
    """Central-difference gradient of ``L(args) = sum(fn(*args) * weight)`` with respect to
    ``args[index]`` (a float64 array), one element at a time."""
    args = list(args)
    x = np.array(args[index], dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        args[index] = x.copy()
        plus = np.sum(np.asarray(fn(*args), dtype=np.float64) * weight)
        flat[i] = old - eps
        args[index] = x.copy()
        minus = np.sum(np.asarray(fn(*args), dtype=np.float64) * weight)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_gradient(fn, args, index, analytic, weight, eps=1e-6, rtol=1e-6, atol=1e-6,
                   name="grad"):
    """Assert that ``analytic`` equals the central-difference gradient of
    ``sum(fn(*args) * weight)`` with respect to ``args[index]``.

    ``atol`` is relative to the largest entry of the numerical gradient (at least 1).
    """
    numeric = numerical_gradient(fn, args, index, weight, eps=eps)
    analytic = np.asarray(analytic)
    assert analytic.shape == numeric.shape, (
        f"{name}: analytic gradient has shape {analytic.shape}, expected {numeric.shape}")
    assert np.all(np.isfinite(analytic)), f"{name}: non-finite analytic gradient"
    scale = max(1.0, float(np.abs(numeric).max())) if numeric.size else 1.0
    np.testing.assert_allclose(analytic.astype(np.float64), numeric, rtol=rtol,
                               atol=atol * scale, err_msg=name)
    return numeric
