"""Regenerate tests/data/small_model.npz and tests/data/small_model_io.npz.

The first is a small trained model saved with ``model.save(path, optimizer=opt)`` in the
current file format; the second holds a fixed input ``x`` and the model's eval-mode output
``y`` at the time of writing. tests/test_serialization.py loads the first, predicts on ``x``
and compares with ``y``: a change that can no longer read old files (or changes what they
compute) fails that test.

Run once, from the repository root, and commit both files:

    PYTHONPATH=src python tools/make_test_model.py

Do NOT rerun it to make a failing test pass: a failure means old files broke.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from cnncore.layers import (BatchNorm1d, BatchNorm2d, Concat, Conv2d, Dropout,  # noqa: E402
                            GlobalAvgPool2d, Identity, LeakyReLU, Linear, LocalResponseNorm,
                            MaxPool2d, ReLU, Residual, Sequential, Tanh)
from cnncore.losses import SoftmaxCrossEntropy  # noqa: E402
from cnncore.optim import Adam  # noqa: E402
from cnncore.trainer import Trainer  # noqa: E402

OUT = os.path.join(os.path.dirname(HERE), "tests", "data")


def build():
    return Sequential(
        Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(),
        Residual([Conv2d(4, 4, 3, padding=1), Tanh()]),
        LocalResponseNorm(3, alpha=1e-2),
        Concat(Identity(), Conv2d(4, 2, 1, bias=False)),
        MaxPool2d(2),
        Residual(Conv2d(6, 8, 3, stride=2, padding=1), shortcut=Conv2d(6, 8, 1, stride=2)),
        LeakyReLU(0.05),
        GlobalAvgPool2d(), BatchNorm1d(8), Dropout(0.25),
        Linear(8, 3),
    ).initialize(1234)


def main():
    rng = np.random.default_rng(2024)
    x_train = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y_train = rng.integers(0, 3, 64)
    model = build()
    model.input_shape = (1, 8, 8)
    opt = Adam(model.parameters(), lr=1e-2)
    Trainer(model, SoftmaxCrossEntropy(), opt, seed=0).fit(x_train, y_train, epochs=2,
                                                            batch_size=16, verbose=0)
    os.makedirs(OUT, exist_ok=True)
    model.save(os.path.join(OUT, "small_model.npz"), optimizer=opt)
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    y = model.eval().forward(x)
    np.savez(os.path.join(OUT, "small_model_io.npz"), x=x, y=y)
    print(f"wrote {OUT}/small_model.npz and small_model_io.npz; outputs:\n{y}")


if __name__ == "__main__":
    main()
