"""Normalisation and dropout: batch norm, local response norm, dropout, and their gradients.

Vectorised NumPy for now (:mod:`cnncore._norm_kernels`); their twins are in
:mod:`cnncore._norm_reference`.
"""

from .._norm_kernels import (batch_norm, batch_norm_backward, dropout, dropout_backward,
                             local_response_norm, local_response_norm_backward)

__all__ = ["batch_norm", "batch_norm_backward", "local_response_norm",
           "local_response_norm_backward", "dropout", "dropout_backward"]
