"""Training run for the kill-safety and Ctrl-C tests (tests/test_kill_safety.py,
tests/test_interrupt.py).

``python _kill_worker.py DIR STEPS`` trains a small CNN for ``STEPS`` optimiser steps with a
checkpoint written after every step (``DIR/ckpt.npz``), resuming from that checkpoint if it
exists. One step is one epoch (the batch is the whole data set), so the checkpoint after
every step is a complete training state and a resumed run continues exactly. Prints
``ready`` once training has started (from ``on_train_begin``: Ctrl-C is then handled by
``fit``), ``done`` at the end.

``--batches K`` makes an epoch K steps (batches of ``32 / K`` samples; ``STEPS`` then counts
epochs, and the checkpoint is written after every epoch); ``--print-steps`` prints
``step N`` after every step (``N``: the trainer's ``global_step``), and ``--pause SECONDS``
sleeps after printing it (a signal sent meanwhile lands between two steps).
"""

import argparse
import os
import signal
import sys
import time

import numpy as np

import cnncore
from cnncore.callbacks import Callback, ModelCheckpoint
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


class Announce(Callback):
    """Print ``ready EPOCH`` when training starts and, if asked, ``step N`` after each step."""

    def __init__(self, steps=False, pause=0.0):
        self.steps, self.pause = steps, pause

    def on_train_begin(self, trainer):
        print("ready", trainer.epoch, flush=True)

    def on_batch_end(self, trainer, batch, logs):
        if self.steps:
            print("step", trainer.global_step, flush=True)
            if self.pause:
                time.sleep(self.pause)


def run(directory, steps, announce=False, batches=1, print_steps=False, pause=0.0):
    """Train to ``steps`` epochs of ``batches`` steps in ``directory`` (resuming from its
    checkpoint); return the trainer."""
    ckpt = os.path.join(directory, "ckpt.npz")
    trainer = Trainer.from_checkpoint(ckpt) if os.path.exists(ckpt) else new_trainer()
    x, y = data()
    callbacks = [ModelCheckpoint(ckpt)]
    if announce:
        callbacks.append(Announce(print_steps, pause))
    trainer.fit(x, y, epochs=max(0, steps - trainer.epoch), batch_size=N // batches,
                verbose=0, callbacks=callbacks)
    return trainer


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("steps", type=int)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--print-steps", action="store_true")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    # A worker started by a test run in the background inherits SIGINT ignored (exec keeps an
    # ignored disposition); Python's default handler is what a user's terminal gives it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cnncore.set_num_threads(1)
    run(args.directory, args.steps, announce=True, batches=args.batches,
        print_steps=args.print_steps, pause=args.pause)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
