""":func:`cnncore.interop.to_torch` converters for :class:`cnncore.layers.Graph`, its merge
layers (:class:`~cnncore.layers.Add`, :class:`~cnncore.layers.Concatenate`) and the padding
layers; registered when :mod:`cnncore.interop_torch` is imported. torch is imported only
inside the conversion (:mod:`cnncore._torch_graph`)."""

from .interop_torch import register_torch_converter
from .layers import Add, Concatenate, ConstantPad2d, Graph

__all__ = []


@register_torch_converter(Graph)
def _graph(layer, ctx):
    from . import _torch_graph as M
    return M.Graph(ctx.children(layer), {name: inputs for name, _, inputs in layer.nodes},
                   layer.input_name, layer.outputs)


@register_torch_converter(Add)
def _add(layer, ctx):
    from . import _torch_graph as M
    return M.Add()


@register_torch_converter(Concatenate)
def _concatenate(layer, ctx):
    from . import _torch_graph as M
    return M.Concatenate(dim=layer.axis)


@register_torch_converter(ConstantPad2d)  # ZeroPad2d too (it only fixes the value)
def _pad(layer, ctx):
    return ctx.nn.ConstantPad2d(layer.padding, layer.value)
