"""Type aliases of cnncore's public signatures (for annotations only; no run-time use)."""

from typing import Any, Dict, List, Union

import numpy as np
import numpy.typing as npt

#: A float32 or float64 array: activations, weights, gradients.
FloatArray = npt.NDArray[np.floating[Any]]
#: Any NumPy array (labels, images of any dtype).
Array = npt.NDArray[Any]
#: Something NumPy turns into an array.
ArrayLike = npt.ArrayLike
#: A dtype argument (``np.float32``, ``"float64"``...).
DTypeLike = npt.DTypeLike
#: A value of a ``get_config()`` / ``to_config()`` dictionary: JSON data, plus tuples.
ConfigValue = Union[None, bool, int, float, str, List["ConfigValue"], tuple,
                    Dict[str, "ConfigValue"]]
#: What ``get_config()`` returns: keyword arguments that rebuild the object.
Config = Dict[str, ConfigValue]
#: Per-epoch or per-batch metrics passed to callbacks (``loss``, ``val_accuracy``, ...).
Logs = Dict[str, Union[float, int, None]]

__all__ = ["FloatArray", "Array", "ArrayLike", "DTypeLike", "ConfigValue", "Config", "Logs"]
