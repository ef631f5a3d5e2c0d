"""The ``torch.nn`` twins of :class:`cnncore.layers.Graph` and its merge layers, built by
:func:`cnncore.interop.to_torch` (converters in :mod:`cnncore.interop_graph`).

Imports torch at the top: only the converters import this module, inside the conversion.
"""

import torch
from torch import nn

__all__ = ["Graph", "Add", "Concatenate"]


class Add(nn.Module):
    """Sum of a list of tensors (a merge node)."""

    multi_input = True

    def forward(self, xs):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y


class Concatenate(nn.Module):
    """Concatenation of a list of tensors along ``dim`` (a merge node)."""

    multi_input = True

    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def forward(self, xs):
        return torch.cat(list(xs), dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Graph(nn.Module):
    """Runs its children in order, each on the outputs of the nodes it names, like
    :class:`cnncore.layers.Graph` (children keep the cnncore node names)."""

    def __init__(self, children, node_inputs, input_name, outputs):
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.node_inputs = {name: list(inputs) for name, inputs in node_inputs.items()}
        self.input_name = input_name
        self.output_names = list(outputs)

    def forward(self, x):
        values = {self.input_name: x}
        for name, module in self._modules.items():
            args = [values[i] for i in self.node_inputs[name]]
            values[name] = module(args) if getattr(module, "multi_input", False) \
                else module(args[0])
        outs = tuple(values[o] for o in self.output_names)
        return outs[0] if len(outs) == 1 else outs
