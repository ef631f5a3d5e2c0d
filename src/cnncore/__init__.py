"""cnncore: a CPU convolutional-network core for Python.

- :mod:`cnncore.functional`: compiled Cython/OpenMP kernels (conv, pooling, activations,
  dense, losses) with their gradients;
- :mod:`cnncore.reference`: the NumPy twin of every kernel, for checks and profiling;
- :mod:`cnncore.layers`, :class:`cnncore.Trainer`, :func:`cnncore.load`: models built from
  layers, trained with a Keras-like ``fit()``, saved to one ``.npz``;
- :mod:`cnncore.datasets`: MNIST, Fashion-MNIST and scikit-learn's digits.
"""

from . import functional, reference
from ._config import get_num_threads, get_workspace_limit, set_num_threads, set_workspace_limit
from ._info import config, show_config
from ._version import __version__
from . import callbacks, layers, losses, model, optim, serialization, trainer
from . import onnx  # the onnx package itself is imported only when export/load run
from .layers import Sequential
from .memory import memory_pool
from .model import lenet5, summary
from .serialization import load, load_checkpoint, save
from .trainer import Trainer, TrainingDiverged

__all__ = [
    "functional", "reference", "get_num_threads", "set_num_threads", "get_workspace_limit",
    "set_workspace_limit", "config",
    "show_config", "__version__",
    "callbacks", "layers", "losses", "model", "optim", "serialization", "trainer",
    "Sequential", "lenet5", "summary", "load", "load_checkpoint", "save", "Trainer",
    "TrainingDiverged", "memory_pool",
]
