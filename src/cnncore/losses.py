"""Loss functions: :class:`SoftmaxCrossEntropy` (from logits) and :class:`MSE`.

A loss object has ``forward(pred, target) -> float`` (caching the gradient),
``backward() -> dL/dpred``, ``correct(pred, target) -> int`` (number of correctly
classified samples, or None when accuracy is meaningless) and ``get_config()``.
"""

from typing import Any, Dict, Optional, Tuple, Type

import numpy as np

from . import functional as F
from ._typing import Array, ArrayLike, Config, FloatArray

__all__ = ["Loss", "SoftmaxCrossEntropy", "CrossEntropy", "MSE", "loss_from_config"]

_LOSSES: Dict[str, Type["Loss"]] = {}


class Loss:
    """Base class: subclasses implement ``_compute(pred, target) -> (loss, grad)``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _LOSSES[cls.__name__] = cls

    def __init__(self) -> None:
        self._grad: Optional[FloatArray] = None

    def __call__(self, pred: FloatArray, target: Array) -> float:
        return self.forward(pred, target)

    def forward(self, pred: FloatArray, target: Array) -> float:
        """The loss (a Python float, mean over the batch) of predictions ``pred``."""
        loss, self._grad = self._compute(pred, target)
        return float(loss)

    def backward(self) -> FloatArray:
        """dL/dpred of the last :meth:`forward`."""
        if self._grad is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return self._grad

    def correct(self, pred: FloatArray, target: Array) -> Optional[int]:
        """Number of samples whose arg-max prediction equals the (arg-max) target, or None
        if the targets are not classes."""
        if pred.ndim != 2 or pred.shape[1] < 2:
            return None
        if target.ndim == 1 and target.dtype.kind in "iu":
            labels = target
        elif target.ndim == 2 and target.shape == pred.shape:
            labels = target.argmax(axis=1)
        else:
            return None
        return int(np.count_nonzero(pred.argmax(axis=1) == labels))

    def _compute(self, pred: FloatArray, target: Array) -> Tuple[float, FloatArray]:
        raise NotImplementedError(f"{type(self).__name__} must implement _compute")

    def prepare_targets(self, y: ArrayLike, where: str = "loss") -> Array:
        """Validate / convert the whole target array once (the Trainer calls this)."""
        return np.asarray(y)

    def get_config(self) -> Config:
        return {}

    def to_config(self) -> Config:
        return {"class": type(self).__name__, "config": self.get_config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of ``softmax(logits)``, mean over the batch.

    Targets are integer class indices ``(N,)`` or one-hot / probability rows ``(N, K)``.
    The model's last layer must output logits (no Softmax layer).
    """

    def _compute(self, pred: FloatArray, target: Array) -> Tuple[float, FloatArray]:
        if pred.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits (N, K), got shape {pred.shape}")
        if len(target) != len(pred):
            raise ValueError(f"SoftmaxCrossEntropy: {len(pred)} predictions but {len(target)} "
                             "targets")
        if target.ndim == 2 and target.dtype != pred.dtype:
            target = target.astype(pred.dtype)
        loss, grad = F.softmax_cross_entropy(pred, target)
        return float(loss), grad

    def prepare_targets(self, y: ArrayLike, where: str = "SoftmaxCrossEntropy") -> Array:
        y = np.asarray(y)
        if y.ndim == 1:
            if y.dtype.kind not in "iu":
                raise TypeError(f"{where}: class labels must be integers, got dtype {y.dtype}")
            y = y.astype(np.int64, copy=False)
            if y.size and (y.min() < 0):
                raise ValueError(f"{where}: class labels must be >= 0, got {y.min()}")
            return y
        if y.ndim == 2:
            if y.dtype.kind != "f":
                y = y.astype(np.float32)
            return y
        raise ValueError(f"{where}: targets must be labels (N,) or one-hot (N, K), got shape "
                         f"{y.shape}")


#: Alias of :class:`SoftmaxCrossEntropy`.
CrossEntropy = SoftmaxCrossEntropy


class MSE(Loss):
    """The course's mean squared error ``E = 1/(2N) * sum_n sum_j (pred - target)^2`` (half the
    per-sample squared error, averaged over the batch)."""

    def _compute(self, pred: FloatArray, target: Array) -> Tuple[float, FloatArray]:
        if target.shape != pred.shape:
            raise ValueError(f"MSE: prediction shape {pred.shape} and target shape "
                             f"{target.shape} differ")
        if target.dtype != pred.dtype:
            target = target.astype(pred.dtype)
        loss, grad = F.mse_loss(pred, target)
        return float(loss), grad

    def prepare_targets(self, y: ArrayLike, where: str = "MSE") -> Array:
        y = np.asarray(y)
        if y.dtype.kind not in "f":
            y = y.astype(np.float32)
        return y


def loss_from_config(config: Config) -> Loss:
    """Rebuild a loss from :meth:`Loss.to_config`."""
    name = config.get("class") if isinstance(config, dict) else None
    cls = _LOSSES.get(name) if isinstance(name, str) else None
    kwargs = config.get("config", {})
    if cls is None or not isinstance(kwargs, dict):
        raise ValueError(f"unknown loss config {config!r}")
    return cls(**kwargs)
