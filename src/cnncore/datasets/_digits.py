"""The 8x8 handwritten digits that scikit-learn ships (UCI optdigits test set)."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["load_digits"]

_MISSING = (
    "load_digits() needs scikit-learn, which ships the 8x8 digits data; install it "
    "with `pip install cnncore[digits]` (or `pip install scikit-learn`)")


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    scikit-learn is imported only when this function is called.

    Returns
    -------
    x : numpy.ndarray
        float32 of shape (1797, 8, 8): the original 0..16 pixel counts divided
        by 16, so values lie in 0..1 (0 is background).
    y : numpy.ndarray
        int64 of shape (1797,), class labels in 0..9.

    Raises
    ------
    ImportError
        If scikit-learn is not installed; the message names the extra
        ``pip install cnncore[digits]``.
    """
    try:
        from sklearn.datasets import load_digits as _sklearn_load_digits
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    bunch = _sklearn_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    if x.shape[1:] != (8, 8) or len(x) != len(y):
        raise ValueError(
            f"scikit-learn's digits: expected images (n, 8, 8) and n labels, got "
            f"{x.shape} and {y.shape}")
    return x, y
