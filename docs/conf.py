"""Sphinx configuration of cnncore's documentation.

Build (warnings are errors)::

    python -m pip install ".[docs]"
    python -m sphinx -W -b html docs docs/_build/html

The gallery scripts in ``docs/gallery/`` run at build time and draw their figures with
cnncore itself. ``CNNCORE_DOCS_GALLERY=0`` (or ``-D plot_gallery=0``) skips running them, for a
quick look at the text; the landing page then lacks its picture, so ``-W`` builds need the
gallery.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import cnncore  # noqa: E402

project = "cnncore"
author = "the cnncore developers"
copyright = "the cnncore developers, BSD-3-Clause"
release = cnncore.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "bench_tables",
    "api_pages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "gallery/README.rst", "**/GALLERY_HEADER.rst",
                    "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.json"]
templates_path = ["_templates"]

# ---------------------------------------------------------------- MyST (narrative pages)
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ----------------------------------------------------------------- API reference
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False,
                           "show-inheritance": True}
autodoc_typehints = "none"          # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False  # the autosummary class template lists them
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Docstrings of the modules other people are changing right now (functional, layers,
# trainer, interop, bench) are rendered as they are; numpydoc's style validation is off so
# that a docstring without an "Examples" section does not break a -W build.
numpydoc_validation_checks = set()

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
}
# The build must not need the network (CI, offline laptops): intersphinx inventories are
# fetched only when CNNCORE_DOCS_INTERSPHINX=1.
if os.environ.get("CNNCORE_DOCS_INTERSPHINX", "0") != "1":
    intersphinx_mapping = {}

# ------------------------------------------------------------------------ gallery
_run_gallery = os.environ.get("CNNCORE_DOCS_GALLERY", "1") != "0"
sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": _run_gallery,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    # Every script sets its own small budget (a few seconds each on 2 cores); this is
    # the ceiling above which sphinx-gallery reports a script as slow.
    "min_reported_time": 2,
    "show_memory": False,
    "show_signature": False,
    "abort_on_example_error": True,
}

# --------------------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"cnncore {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_sidebars = {"index": [], "getting_started": []}
html_show_sourcelink = False
html_copy_source = False
