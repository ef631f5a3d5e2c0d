"""ONNX export and import, and ONNX Runtime as a reference engine.

* :func:`export` writes a cnncore model (any layer, container, zoo network or
  :class:`cnncore.layers.Graph`) as a standard ONNX graph;
* :func:`load` reads an ONNX file (written by cnncore, by ``torch.onnx.export`` or by other
  tools) into a cnncore model that runs, trains and saves like any other: a
  :class:`cnncore.layers.Sequential` for a chain, a :class:`cnncore.layers.Graph` otherwise;
* :func:`cnncore.onnx.bench.ort_session` runs a cnncore model in ONNX Runtime (the
  whole-network bench's reference column).

The ``onnx`` package is needed (``pip install "cnncore[onnx]"``) and imported only when one
of these functions is called; ``onnxruntime`` only for ``ort_session`` and the tests.
:mod:`cnncore.onnx.ops` lists the supported layers and operators.
"""

from .export import export, to_model_proto
from .load import load

__all__ = ["export", "load", "to_model_proto"]
