"""Shared pytest setup for the kernel tests.

* puts this directory on ``sys.path`` so that test modules can ``import _gradcheck``
  (the tests directory is deliberately not a package);
* falls back to ``<repo>/src`` when ``cnncore`` is not importable (run as
  ``PYTHONPATH=src python -m pytest tests`` after ``python setup.py build_ext --inplace``);
* ``rng``: a numpy Generator seeded from the test's node id, so that every test is
  reproducible on its own and independent of the order the tests run in;
* restores the process-wide thread setting after every test.
"""

import os
import sys
import zlib

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

try:
    import cnncore  # noqa: F401
except ImportError:  # not installed and PYTHONPATH not set
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
    import cnncore  # noqa: F401


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's node id."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """A test that calls ``cnncore.set_num_threads`` must not leak it into the next test."""
    yield
    setter = getattr(cnncore, "set_num_threads", None)
    if setter is not None:
        setter(None)
