"""Training run for the kill-safety tests (tests/test_kill_safety.py).

``python _kill_worker.py DIR STEPS`` trains a small CNN for ``STEPS`` optimiser steps with a
checkpoint written after every step (``DIR/ckpt.npz``), resuming from that checkpoint if it
exists. One step is one epoch (the batch is the whole data set), so the checkpoint after
every step is a complete training state and a resumed run continues exactly. Prints
``ready`` once training is about to start, ``done`` at the end.
"""

import os
import sys

import numpy as np

import cnncore
from cnncore.callbacks import ModelCheckpoint
from cnncore.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import Adam
from cnncore.trainer import Trainer

N, CLASSES = 32, 10


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    return x, y


def new_trainer():
    # big enough that saving takes a noticeable part of each step (~70k parameters plus
    # Adam's two moments): kills often land inside a save
    model = Sequential(Conv2d(1, 8, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(8 * 6 * 6, 200), ReLU(), Linear(200, CLASSES)).initialize(0)
    return Trainer(model, SoftmaxCrossEntropy(), Adam(model.parameters(), lr=1e-3), seed=0)


def run(directory, steps, announce=False):
    """Train to ``steps`` steps in ``directory`` (resuming from its checkpoint); return the
    trainer."""
    ckpt = os.path.join(directory, "ckpt.npz")
    trainer = Trainer.from_checkpoint(ckpt) if os.path.exists(ckpt) else new_trainer()
    x, y = data()
    if announce:
        print("ready", trainer.epoch, flush=True)
    trainer.fit(x, y, epochs=max(0, steps - trainer.epoch), batch_size=N, verbose=0,
                callbacks=[ModelCheckpoint(ckpt)])
    return trainer


if __name__ == "__main__":
    cnncore.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]), announce=True)
    print("done", flush=True)
