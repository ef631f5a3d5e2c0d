"""The public kernel API, in the manner of ``torch.nn.functional``: NumPy arrays in and out.

Every function validates its arguments here, at the Python boundary, and then runs a
compiled Cython/OpenMP kernel with bounds checks off. :mod:`cnncore.reference` holds a
NumPy twin of each function with the same name and signature.

Conventions
-----------
- Activations are NCHW (``(N, C, L)`` for 1-D), weights ``(C_out, C_in // groups, kH, kW)``;
  convolution is cross-correlation (the kernel is not flipped), as in PyTorch.
- ``padding`` is an int, a pair, or ``'valid'`` (0), ``'same'`` (``d*(k-1)//2``, odd kernels
  only) or ``'full'`` (``d*(k-1)``); ``stride`` and ``dilation`` are an int or a pair. The
  output size is ``floor((H + 2p - d(k-1) - 1) / s) + 1``.
- float32 and float64 are supported; the output dtype follows the input. Integer and bool
  inputs are cast to the float dtype of the other array arguments (float32 if none);
  float32 mixed with float64 raises TypeError. Non-contiguous inputs are copied.
- ``n_threads=None`` uses :func:`cnncore.get_num_threads`. Results are bit-identical for
  every thread count: reductions over the batch run in a fixed order.
- Bad shapes raise ValueError, bad dtypes or argument types TypeError, naming the function
  and the expected and received shapes.

One module per kernel family: :mod:`~cnncore.functional.conv`,
:mod:`~cnncore.functional.pool`, :mod:`~cnncore.functional.activation`,
:mod:`~cnncore.functional.dense` (linear, softmax, losses) and
:mod:`~cnncore.functional.norm`; :mod:`~cnncore.functional.planner` chooses the convolution
algorithm, and ``_common`` holds the thread policy and scratch buffers they share.
"""

# The public names, re-exported from their family modules.
from .._api import KERNELS, NORM_KERNELS
from .activation import (leaky_relu, leaky_relu_backward, relu,  # noqa: F401
                         relu_backward, sigmoid, sigmoid_backward, tanh, tanh_backward)
from .conv import conv1d, conv1d_backward, conv2d, conv2d_backward  # noqa: F401
from .dense import (linear, linear_backward, mse_loss, softmax,  # noqa: F401
                    softmax_cross_entropy)
from .norm import (add_relu, batch_norm, batch_norm_backward, dropout,  # noqa: F401
                   dropout_backward, local_response_norm, local_response_norm_backward)
from .pool import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d,  # noqa: F401
                   global_avg_pool2d_backward, max_pool2d, max_pool2d_backward)

__all__ = list(KERNELS + NORM_KERNELS)
