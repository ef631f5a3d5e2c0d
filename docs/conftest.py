"""pytest setup for the documentation's examples (``python -m pytest docs``).

The ``>>>`` blocks of the Markdown pages run as doctests, one namespace per page, in a
fresh temporary directory (the examples write model files and logs), with the same
per-test thread-count reset as the test suite.
"""

import pytest


@pytest.fixture(autouse=True)
def _doc_example_in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import cnncore
    threads = cnncore.get_num_threads()
    yield
    cnncore.set_num_threads(threads)
