"""Layers stay below the model floor: no module of cnncore.layers imports cnncore.model,
trainer, serialization or zoo, not even lazily inside a function."""

import ast
import os

import cnncore.layers

ABOVE = {"model", "trainer", "serialization", "zoo"}


def _imported_cnncore_modules(path):
    """Top-level cnncore submodule names a layers/ file imports (relative imports resolved
    from cnncore.layers)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2:          # from .. import x / from ..x import y
                parts = (node.module or "").split(".")
                names.update([parts[0]] if node.module else [a.name for a in node.names])
            elif node.level == 0 and (node.module or "").startswith("cnncore."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cnncore."):
                    names.add(alias.name.split(".")[1])
    return names


def test_layers_import_nothing_above_them():
    folder = os.path.dirname(cnncore.layers.__file__)
    files = [f for f in os.listdir(folder) if f.endswith(".py")]
    assert "base.py" in files and "conv.py" in files
    offenders = {f: sorted(_imported_cnncore_modules(os.path.join(folder, f)) & ABOVE)
                 for f in files}
    assert not {f: m for f, m in offenders.items() if m}


def test_the_check_sees_a_lazy_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..serialization import save\n    from .. import zoo\n")
    assert _imported_cnncore_modules(bad) == {"serialization", "zoo"}
