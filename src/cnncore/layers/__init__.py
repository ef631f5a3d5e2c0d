"""Layers with forward / backward passes, PyTorch-like names and arguments.

Every layer has ``forward(x)``, ``backward(grad_out) -> grad_in``, ``parameters()``,
``train()`` / ``eval()``, ``output_shape(input_shape)`` (shapes without the batch axis),
``get_config()`` (rebuilds it when loading a saved model) and a PyTorch-style ``repr``.
"""

from . import init
from .adaptive import AdaptiveAvgPool2d
from .activation import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, Parameter, layer_from_config, register_layer
from .containers import Concat, Residual, Sequential
from .conv import Conv1d, Conv2d
from .fusion import FusedBatchNorm2d, FusedConv2d, fuse
from .linear import Dense, Flatten, Identity, Linear
from .norm import BatchNorm1d, BatchNorm2d, Dropout, LocalResponseNorm
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d

__all__ = [
    "Layer", "Parameter", "layer_from_config", "register_layer", "init",
    "Conv2d", "Conv1d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "AdaptiveAvgPool2d",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
    "Flatten", "Identity", "Linear", "Dense",
    "Dropout", "BatchNorm2d", "BatchNorm1d", "LocalResponseNorm",
    "Sequential", "Residual", "Concat",
    "fuse", "FusedConv2d", "FusedBatchNorm2d",
]

from .graph import Add, Concatenate, Graph  # noqa: E402  (DAG models, issue 14)
from .padding import ConstantPad2d, ZeroPad2d  # noqa: E402
__all__ += ["Graph", "Add", "Concatenate", "ConstantPad2d", "ZeroPad2d"]
