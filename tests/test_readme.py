"""The README's tour runs as written (on a slice of MNIST, in a temporary directory)."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour():
    text = README.read_text(encoding="utf-8")
    section = text.split("## A tour", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no ```python block after '## A tour'"
    return match.group(1)


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 160


def test_readme_tour_runs(tmp_path, monkeypatch):
    import cnncore.datasets
    from cnncore.datasets import _mnist

    if _mnist._find_local("mnist") is None:
        pytest.skip("MNIST not on disk; run `python tools/fetch_mnist.py` to fetch it")
    real = cnncore.datasets.load_mnist

    def small_mnist(path=None):
        (x_train, y_train), (x_test, y_test) = real(path)
        return (x_train[:1000], y_train[:1000]), (x_test[:500], y_test[:500])

    monkeypatch.setattr(cnncore.datasets, "load_mnist", small_mnist)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_tour(), str(README), "exec"), namespace)
    assert namespace["y"].shape == (8, 16, 16, 16)
    assert namespace["trainer"].evaluate(namespace["x_test"], namespace["y_test"])["accuracy"] > 0.5
    assert (tmp_path / "lenet5.npz").is_file()
    assert np.isfinite(namespace["history"]["loss"]).all()
