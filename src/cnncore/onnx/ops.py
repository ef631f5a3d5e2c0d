"""What :func:`cnncore.onnx.export` and :func:`cnncore.onnx.load` support.

Export (cnncore layer -> ONNX operators):

=========================================  ==============================================
Conv2d, Conv1d                             Conv (pads, strides, dilations, group)
Linear                                     Gemm (transB=1)
BatchNorm2d, BatchNorm1d                   BatchNormalization (running statistics)
ReLU, LeakyReLU, Sigmoid, Tanh, Softmax    Relu, LeakyRelu, Sigmoid, Tanh, Softmax
MaxPool2d, AvgPool2d                       MaxPool, AveragePool (count_include_pad)
GlobalAvgPool2d                            GlobalAveragePool + Flatten
AdaptiveAvgPool2d                          Identity / GlobalAveragePool / AveragePool, or
                                           two MatMul with averaging matrices
Flatten, Identity, Dropout                 Flatten (axis 1), Identity, Dropout (inference)
LocalResponseNorm (odd size)               LRN
ConstantPad2d, ZeroPad2d                   Pad (constant)
Sequential, Residual, Concat, Graph, Add,  the children's operators, Add, Concat
Concatenate; zoo ResidualBlock, DenseLayer
=========================================  ==============================================

Load (ONNX operator -> cnncore layers): the inverse of the table, plus MatMul with a
constant weight (+ a constant Add: the bias), Gemm with alpha / beta / transB, Reshape to
``(N, -1)``, Sum, Pad, asymmetric or ``auto_pad`` padding (an explicit ZeroPad2d /
ConstantPad2d before the layer), MaxPool with ``ceil_mode``; Constant, initializers and the
shape arithmetic Shape / Gather / Unsqueeze / Squeeze / Concat / Cast / Reshape on
constants are evaluated at load time.
"""

from .export import EXPORTERS, _add_zoo_blocks
from .load import CONSTANT_OPS, IMPORTERS

__all__ = ["exportable_layers", "importable_operators"]


def exportable_layers():
    """Names of the layer classes :func:`cnncore.onnx.export` writes (subclasses that do not
    override ``forward`` too)."""
    _add_zoo_blocks()
    return sorted(cls.__name__ for cls in EXPORTERS)


def importable_operators():
    """ONNX operator types :func:`cnncore.onnx.load` converts to layers, and those it
    evaluates at load time when their inputs are constants."""
    return {"layers": sorted(IMPORTERS), "constant": sorted(CONSTANT_OPS)}

