"""Obviously-correct twins of the normalisation kernels of :mod:`cnncore.functional.norm`
(same names and signatures): explicit loops over channels, formulas written from the
definitions, in float64. Slow; for tests."""

import numpy as np

__all__ = ["batch_norm", "batch_norm_backward", "local_response_norm",
           "local_response_norm_backward", "dropout", "dropout_backward", "add_relu"]


def batch_norm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1,
               eps=1e-5, n_threads=None):
    n_ch = x.shape[1]
    y = np.empty_like(x)
    mean = np.empty(n_ch, dtype=x.dtype)
    inv_std = np.empty(n_ch, dtype=x.dtype)
    for c in range(n_ch):
        v = x[:, c].astype(np.float64)
        if training:
            values = v.ravel()
            mu = values.sum() / values.size
            var = ((values - mu) ** 2).sum() / values.size
            unbiased = ((values - mu) ** 2).sum() / (values.size - 1)
            if running_mean is not None:
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu
            if running_var is not None:
                running_var[c] = (1 - momentum) * running_var[c] + momentum * unbiased
        else:
            mu = float(running_mean[c])
            var = float(running_var[c])
        s = 1.0 / np.sqrt(var + eps)
        mean[c] = mu
        inv_std[c] = s
        y[:, c] = gamma[c] * (v - mu) * s + beta[c]
    return y, mean, inv_std


def batch_norm_backward(grad_out, x, mean, inv_std, gamma, training=True, n_threads=None):
    n_ch = grad_out.shape[1]
    gx = np.empty_like(grad_out)
    g_gamma = np.empty(n_ch, dtype=grad_out.dtype)
    g_beta = np.empty(n_ch, dtype=grad_out.dtype)
    for c in range(n_ch):
        g = grad_out[:, c].astype(np.float64)
        xh = (x[:, c].astype(np.float64) - float(mean[c])) * float(inv_std[c])
        g_beta[c] = g.sum()
        g_gamma[c] = (g * xh).sum()
        # dL/dx_hat, then the chain rule through mean and variance of the batch.
        g_xhat = g * float(gamma[c])
        if training:
            m = g.size
            gx[:, c] = float(inv_std[c]) * (g_xhat - g_xhat.sum() / m
                                            - xh * (g_xhat * xh).sum() / m)
        else:
            gx[:, c] = g_xhat * float(inv_std[c])
    return gx, g_gamma, g_beta


def add_relu(a, b, out=None, n_threads=None):
    y = np.maximum(np.asarray(a) + np.asarray(b), 0)
    if out is None:
        return y
    out[...] = y
    return out


def _window(c, size, n_ch):
    return range(max(0, c - size // 2), min(n_ch, c + (size - 1) // 2 + 1))


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    n_ch = x.shape[1]
    y = np.empty_like(x)
    xd = x.astype(np.float64)
    for c in range(n_ch):
        s = sum(xd[:, j] ** 2 for j in _window(c, size, n_ch))
        y[:, c] = xd[:, c] / (k + alpha / size * s) ** beta
    return y


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0):
    n_ch = x.shape[1]
    xd = x.astype(np.float64)
    g = grad_out.astype(np.float64)
    den = [k + alpha / size * sum(xd[:, j] ** 2 for j in _window(c, size, n_ch))
           for c in range(n_ch)]
    gx = np.zeros_like(xd)
    # y_c = x_c * D_c^-beta; dy_c/dx_j = [c == j] D_c^-beta
    #                                   - beta x_c D_c^(-beta-1) * (alpha/size) * 2 x_j  (j in window c)
    for c in range(n_ch):
        gx[:, c] += g[:, c] * den[c] ** -beta
        for j in _window(c, size, n_ch):
            gx[:, j] -= g[:, c] * beta * xd[:, c] * den[c] ** (-beta - 1) * (alpha / size) * 2 * xd[:, j]
    return gx.astype(x.dtype)


def dropout(x, p, rng, training=True):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x, None
    u = rng.random(x.shape, dtype=x.dtype)
    keep = u >= p
    y = np.where(keep, x / (1.0 - p), 0).astype(x.dtype)
    mask = np.where(keep, 1.0 / (1.0 - p), 0.0).astype(x.dtype)
    return y, mask


def dropout_backward(grad_out, mask):
    if mask is None:
        return grad_out
    return np.where(mask != 0, grad_out * mask, 0).astype(grad_out.dtype)
