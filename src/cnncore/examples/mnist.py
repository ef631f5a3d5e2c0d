"""Train LeNet-5 on MNIST: ``python -m cnncore.examples.mnist [options]``.

LeNet-5 (ReLU, max pooling, 61,706 parameters) trained with Adam, a per-batch cosine
learning-rate decay and random translations of up to 2 pixels (``--shift``) reaches more
than 99 % test accuracy in 10 epochs. The script shows progress,
prints the time per epoch, saves the model (``lenet5_mnist.npz``) and a PNG of the training
curves (if matplotlib is installed) in ``--out``, and ends with ``test accuracy: 0.XXXX``.
With ``--viz`` it also saves the first-layer filters and the feature maps of the first test
image (``lenet5_mnist_filters.png``, ``lenet5_mnist_feature_maps.png``, via :mod:`cnncore.viz`).

The test set is evaluated after every epoch to draw the curves; it is not used to choose
anything (no early stopping, fixed schedule).

Data-parallel on MPI (``pip install "cnncore[mpi]"``):
``mpiexec -n 2 python -m cnncore.examples.mnist --distributed [--threads T]`` trains with the
same global batch on 2 ranks (T kernel threads each; default: the cores divided by the
ranks on the machine); rank 0 alone prints and saves.
"""

import argparse
import os
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._config import get_num_threads, set_num_threads
from ..callbacks import LearningRateScheduler
from ..losses import SoftmaxCrossEntropy
from ..model import lenet5
from ..optim import Adam, CosineLR
from ..trainer import Trainer

# Mean and standard deviation of the MNIST training pixels (in 0..1).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def prepare(images):
    """``(N, 28, 28)`` uint8 -> ``(N, 1, 28, 28)`` float32, standardised."""
    x = images.astype(np.float32) / 255.0
    x -= MNIST_MEAN
    x /= MNIST_STD
    return x[:, None, :, :]


def random_shift(max_shift, fill):
    """Augmentation for ``Trainer.fit(transform=...)``: translate each image of a batch by a
    random whole number of pixels in ``[-max_shift, max_shift]`` along each axis, filling the
    uncovered border with ``fill`` (the background value)."""

    def transform(xb, rng):
        n, s = len(xb), max_shift
        padded = np.pad(xb, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=fill)
        windows = sliding_window_view(padded, xb.shape[2:], axis=(2, 3))
        dy = rng.integers(0, 2 * s + 1, n)
        dx = rng.integers(0, 2 * s + 1, n)
        return np.ascontiguousarray(windows[np.arange(n), :, dy, dx])

    return transform


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m cnncore.examples.mnist",
                                description="Train LeNet-5 on MNIST with cnncore.")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (2e-3)")
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads (per rank with --distributed; default: "
                        "$CNNCORE_NUM_THREADS or all cores, divided by the ranks per machine "
                        "with --distributed)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the MPI ranks (run under mpiexec / srun; needs "
                        "mpi4py); --batch-size is the global batch")
    p.add_argument("--subset", type=int, default=None,
                   help="train on the first N training images only (fast runs)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    p.add_argument("--data", default=None,
                   help="directory holding the MNIST files (default: cnncore's cache/download)")
    p.add_argument("--out", default=".", help="output directory (default: current directory)")
    p.add_argument("--shift", type=int, default=2,
                   help="random translation of training images by up to this many pixels "
                        "(data augmentation; 0 disables it; default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--viz", action="store_true",
                   help="also save the first-layer filters and the feature maps of one test "
                        "image (cnncore.viz; needs matplotlib)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or (args.subset is not None and args.subset < 1):
        p.error("--epochs, --batch-size and --subset must be positive")
    if not 0 <= args.shift <= 8:
        p.error("--shift must be between 0 and 8")
    return args


def main(argv=None):
    args = parse_args(argv)
    comm, rank = None, 0
    if args.distributed:
        from ..distributed import Communicator, default_threads, install_abort_hook
        comm = Communicator()
        rank = comm.rank
        install_abort_hook(comm)
        if args.threads is None and not os.environ.get("CNNCORE_NUM_THREADS"):
            args.threads = default_threads(comm)
    if args.threads is not None:
        set_num_threads(args.threads)
    say = print if rank == 0 else (lambda *a, **k: None)
    from ..datasets import load_mnist

    if comm is not None and rank != 0:
        comm.barrier()  # rank 0 fills the cache first (concurrent loads are safe, just wasteful)
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data)
    if comm is not None and rank == 0:
        comm.barrier()
    if args.subset is not None:
        x_train, y_train = x_train[:args.subset], y_train[:args.subset]
    x_train, x_test = prepare(x_train), prepare(x_test)
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    ranks = "" if comm is None else f" on each of {comm.size} ranks"
    say(f"MNIST: {len(x_train)} training and {len(x_test)} test images; "
        f"{get_num_threads()} threads{ranks}")

    model = lenet5(seed=args.seed)
    if rank == 0:
        model.summary()
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    optimizer = Adam(model.parameters(), lr=args.lr)
    schedule = CosineLR(args.lr, total=args.epochs * steps_per_epoch)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optimizer, seed=args.seed,
                      distributed=comm)
    background = (0.0 - MNIST_MEAN) / MNIST_STD
    transform = random_shift(args.shift, np.float32(background)) if args.shift else None

    start = time.perf_counter()
    history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                          validation_data=(x_test, y_test),
                          callbacks=[LearningRateScheduler(schedule, per="batch")],
                          verbose=2 if args.quiet else 1, transform=transform)
    total = time.perf_counter() - start

    seconds = history["seconds"]
    result = trainer.evaluate(x_test, y_test)  # every rank (sharded)
    if rank != 0:
        return result["accuracy"]
    print("seconds per epoch: " + ", ".join(f"{s:.1f}" for s in seconds)
          + f" (mean {np.mean(seconds):.1f} s, {np.mean(history['images_per_sec']):.0f} "
          f"training images/s; total {total:.1f} s)")
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "lenet5_mnist.npz")
    model.save(model_path)
    print(f"saved model to {model_path}")
    png = os.path.join(args.out, "lenet5_mnist_curves.png")
    if history.plot(png, title="LeNet-5 on MNIST"):
        print(f"saved training curves to {png}")
    else:
        print("matplotlib is not installed: skipping the training-curve PNG "
              "(pip install matplotlib)")
    if args.viz:
        from .. import viz
        for name, draw in (("filters", lambda p: viz.plot_filters(model, p)),
                           ("feature_maps", lambda p: viz.plot_feature_maps(model, x_test[0], p))):
            path = os.path.join(args.out, f"lenet5_mnist_{name}.png")
            draw(path)
            print(f"saved {name.replace('_', ' ')} to {path}")
    print(f"test accuracy: {result['accuracy']:.4f}")
    return result["accuracy"]


if __name__ == "__main__":
    main()
