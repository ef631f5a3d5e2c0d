"""pytest setup for the documentation's examples (``python -m pytest docs``).

The ``>>>`` blocks of the Markdown pages run as doctests, one namespace per page, in a
fresh temporary directory (the examples write model files and logs), with the same
per-test thread-count reset as the test suite.

Writing a tested block in a page: a ```` ```pycon ```` fence with ``>>>`` prompts and the
expected output, **ending with a blank line before the closing fence** (doctest reads the
expected output up to a blank line, so it would otherwise expect the fence too). Setup that
readers need not see goes in an HTML comment (``<!-- >>> ... -->``, also ending with a
blank line): MyST does not render it, doctest runs it. Plain ```` ```python ```` blocks are
not run. Options: ``NORMALIZE_WHITESPACE`` and ``ELLIPSIS`` are on (pyproject.toml).
"""

import pytest


@pytest.fixture(autouse=True)
def _doc_example_in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import cnncore
    threads = cnncore.get_num_threads()
    yield
    cnncore.set_num_threads(threads)
