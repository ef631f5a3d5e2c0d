"""Train a small CNN on scikit-learn's 8x8 digits in seconds:
``python -m cnncore.examples.digits [--epochs N] [--seed S] [--threads T] [--quiet]``.

Needs scikit-learn (``pip install cnncore[digits]``). 1797 images are split 80/20 at random
(seeded); the script prints the test accuracy as ``test accuracy: 0.XXXX``.
"""

import argparse
import time

import numpy as np

from .._config import set_num_threads
from ..callbacks import LearningRateScheduler
from ..layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ..losses import SoftmaxCrossEntropy
from ..optim import Adam, CosineLR
from ..trainer import Trainer


def build_model(seed=0):
    """conv3x3 1->16, ReLU, maxpool 2, conv3x3 16->32, ReLU, maxpool 2, linear 128->10."""
    model = Sequential(
        Conv2d(1, 16, 3, padding=1), ReLU(), MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1), ReLU(), MaxPool2d(2),
        Flatten(), Linear(32 * 2 * 2, 10))
    model.input_shape = (1, 8, 8)
    return model.initialize(seed)


def split(x, y, test_fraction=0.2, seed=0):
    """Random train/test split (same seed, same split)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cnncore.examples.digits",
                                description="Train a small CNN on the 8x8 digits.")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    if args.threads is not None:
        set_num_threads(args.threads)
    from ..datasets import load_digits

    x, y = load_digits()
    x = x.astype(np.float32)[:, None, :, :]  # (N, 8, 8) in 0..1 -> (N, 1, 8, 8)
    (x_train, y_train), (x_test, y_test) = split(x, y.astype(np.int64), seed=args.seed)
    model = build_model(args.seed)
    if not args.quiet:
        model.summary()
    trainer = Trainer(model, SoftmaxCrossEntropy(), Adam(model.parameters(), lr=args.lr),
                      seed=args.seed)
    start = time.perf_counter()
    trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                callbacks=[LearningRateScheduler(CosineLR(args.lr, total=args.epochs))],
                verbose=0 if args.quiet else 2)
    seconds = time.perf_counter() - start
    acc = trainer.evaluate(x_test, y_test)["accuracy"]
    print(f"trained on {len(x_train)} images for {args.epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
