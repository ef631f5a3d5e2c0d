"""cnncore: a CPU convolutional-network core for Python.

- :mod:`cnncore.functional`: compiled Cython/OpenMP kernels (conv, pooling, activations,
  dense, losses) with their gradients;
- :mod:`cnncore.reference`: the NumPy twin of every kernel, for checks and profiling.
"""

from . import functional, reference
from ._config import get_num_threads, set_num_threads
from ._info import config, show_config
from ._version import __version__

__all__ = ["functional", "reference", "get_num_threads", "set_num_threads", "config",
           "show_config", "__version__"]
