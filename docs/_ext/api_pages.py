"""Write the API reference pages (``docs/api/*.rst``) from the modules' ``__all__``.

Each public module gets a page: its docstring, then an autosummary table of the names it
exports, each with its own generated page. A name that a module re-exports from another
public module (``cnncore.Trainer`` is ``cnncore.trainer.Trainer``) is documented once, in
its home module, and listed with a link where it is re-exported. So a new public function
appears in the reference by being added to ``__all__``: nothing to list by hand here.
"""

import importlib
import types
from pathlib import Path

#: The public modules, in the order of the reference. The home of an object is the
#: longest of these that prefixes its ``__module__`` (``cnncore.functional.conv`` ->
#: ``cnncore.functional``), else the first one exporting it.
MODULES = [
    ("cnncore", "The top-level package"),
    ("cnncore.functional", "Compiled kernels"),
    ("cnncore.reference", "NumPy reference twins"),
    ("cnncore.layers", "Layers and containers"),
    ("cnncore.losses", "Losses"),
    ("cnncore.optim", "Optimisers and learning-rate schedules"),
    ("cnncore.callbacks", "Training callbacks"),
    ("cnncore.trainer", "The Trainer"),
    ("cnncore.serialization", "Saving and loading"),
    ("cnncore.model", "Model helpers"),
    ("cnncore.memory", "The memory pool"),
    ("cnncore.datasets", "Data sets"),
    ("cnncore.zoo", "The model zoo"),
    ("cnncore.interop", "PyTorch interop"),
    ("cnncore.onnx", "ONNX export and import"),
    ("cnncore.viz", "Filters and feature maps"),
    ("cnncore.bench", "The profiler"),
]
SKIP = {"__version__"}


def _home(obj, default, exported_by):
    module = getattr(obj, "__module__", None)
    if isinstance(module, str):
        best = None
        for name, _ in MODULES:
            if (module == name or module.startswith(name + ".")) and name in exported_by:
                if best is None or len(name) > len(best):
                    best = name
        if best is not None:
            return best
    return exported_by[0] if exported_by else default


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
    return [n for n in names if n not in SKIP
            and not isinstance(getattr(module, n, None), types.ModuleType)]


def write_pages(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = {name: importlib.import_module(name) for name, _ in MODULES}
    exported_by = {}
    for name, module in modules.items():
        for attr in _public(module):
            exported_by.setdefault(id(getattr(module, attr)), []).append(name)
    index = ["API reference", "=============", "",
             "Every public name of cnncore, module by module, generated from the docstrings.",
             "", ".. toctree::", "   :maxdepth: 1", ""]
    for name, title in MODULES:
        module = modules[name]
        own, elsewhere = [], []
        for attr in _public(module):
            obj = getattr(module, attr)
            home = _home(obj, name, exported_by.get(id(obj), [name]))
            if home == name:
                own.append(attr)
            else:
                elsewhere.append(f"~{home}.{attr}")
        heading = f"``{name}``: {title}"
        lines = [heading, "=" * len(heading), "", f".. automodule:: {name}", "   :no-members:",
                 "", f".. currentmodule:: {name}", ""]
        if own:
            lines += [".. autosummary::", "   :toctree: generated/", "", *(f"   {a}" for a in own), ""]
        if elsewhere:
            lines += ["Also available here:", "", ".. currentmodule:: None", "", ".. autosummary::", "",
                      *(f"   {a}" for a in elsewhere), ""]
        page = out_dir / f"{name}.rst"
        text = "\n".join(lines)
        if not page.exists() or page.read_text() != text:  # keep mtimes: no needless rebuilds
            page.write_text(text)
        index.append(f"   {name}")
    text = "\n".join(index) + "\n"
    page = out_dir / "index.rst"
    if not page.exists() or page.read_text() != text:
        page.write_text(text)


def _on_config_inited(app, config):
    write_pages(Path(app.srcdir) / "api")


def setup(app):
    # At config-inited, before Sphinx lists the source files and autosummary generates the
    # stub pages these files list.
    app.connect("config-inited", _on_config_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
