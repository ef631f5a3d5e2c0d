"""Lazy imports of the optional packages (cnncore itself imports without them)."""

import importlib

_HINT = {"onnx": 'pip install "cnncore[onnx]" (or pip install onnx)',
         "onnxruntime": "pip install onnxruntime"}


def _require(module, where):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{where} needs the {module} package: {_HINT[module]}") from e


def require_onnx(where):
    onnx = _require("onnx", where)
    importlib.import_module("onnx.numpy_helper")
    return onnx


def require_onnxruntime(where):
    return _require("onnxruntime", where)
