"""Train a small (CIFAR-variant) zoo network on 32x32 colour images with the Trainer.

Run: ``python -m cnncore.examples.cifar_like [--model resnet18] [--data DIR] [options]``

Without ``--data`` the images are synthetic (made here, no download): ten classes of
coloured patterns -- horizontal, vertical and the two diagonal stripes, checkerboard, disc,
ring, square, cross and Gaussian blobs -- with random colours, frequencies, positions, sizes
and pixel noise; a network has to learn shapes and orientations, not colours, to tell them
apart. With ``--data DIR`` it reads the real CIFAR-10 from the "python version" batches
(``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, e.g. the extracted
``cifar-10-batches-py`` folder), with a restricted unpickler that loads only arrays.

The model is ``cnncore.zoo.get_model(MODEL, variant='cifar')``; ResNets and VGGs are built at
``--width 16`` by default (a sixteenth of the FLOPs of the literature's 64, so an epoch of
2,000 images takes about 10 s on 2 cores); pass ``--width 64`` for the
full-width network. The script prints the model summary, trains with Adam and a per-batch
cosine decay (progress bar), saves ``<model>_cifar_like.npz`` and the training curves
``<model>_cifar_like_curves.png`` in ``--out`` and ends with ``test accuracy: 0.XXXX``.
"""

import argparse
import os
import time

import numpy as np

from .._config import get_num_threads, set_num_threads
from ..callbacks import LearningRateScheduler
from ..losses import SoftmaxCrossEntropy
from ..optim import Adam, CosineLR
from ..trainer import Trainer
from ..viz import first_conv

CLASSES = ("horizontal stripes", "vertical stripes", "diagonal /", "diagonal \\",
           "checkerboard", "disc", "ring", "square", "cross", "blobs")


# ---------------------------------------------------------------------- synthetic data
def _masks(label, n, size, rng):
    """``n`` pattern masks ``(n, size, size)`` in [0, 1] of class ``label``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy[None], xx[None]

    def u(lo, hi):
        return rng.uniform(lo, hi, (n, 1, 1)).astype(np.float32)

    freq, phase = u(0.35, 0.9), u(0, 2 * np.pi)
    cy, cx = u(9, size - 9), u(9, size - 9)
    r = u(5, 10)
    if label == 0:
        wave = np.sin(freq * yy + phase)
    elif label == 1:
        wave = np.sin(freq * xx + phase)
    elif label == 2:
        wave = np.sin(freq * (xx + yy) / np.sqrt(2) + phase)
    elif label == 3:
        wave = np.sin(freq * (xx - yy) / np.sqrt(2) + phase)
    elif label == 4:
        wave = np.sign(np.sin(freq * xx + phase)) * np.sign(np.sin(freq * yy + u(0, 6.3)))
    if label <= 4:
        return (wave > 0).astype(np.float32)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    if label == 5:
        return (d < r).astype(np.float32)
    if label == 6:
        return (np.abs(d - r) < u(1.2, 2.5)).astype(np.float32)
    if label == 7:
        return ((np.abs(yy - cy) < r * 0.85) & (np.abs(xx - cx) < r * 0.85)).astype(np.float32)
    if label == 8:
        arm, half = u(1.5, 3), r + 2
        vertical = (np.abs(xx - cx) < arm) & (np.abs(yy - cy) < half)
        horizontal = (np.abs(yy - cy) < arm) & (np.abs(xx - cx) < half)
        return (vertical | horizontal).astype(np.float32)
    m = np.zeros((n, size, size), np.float32)  # 9: three Gaussian blobs
    for _ in range(3):
        by, bx, s = u(4, size - 4), u(4, size - 4), u(2, 4)
        m += np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * s ** 2))
    return np.clip(m, 0, 1)


def synthetic_cifar(n, seed=0, size=32, noise=0.08):
    """``n`` synthetic 32x32 RGB images (balanced over the ten :data:`CLASSES`).

    Returns ``x`` uint8 ``(n, size, size, 3)`` and ``y`` int64 ``(n,)`` in a random order.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.float32)
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        m = _masks(c, len(idx), size, rng)[..., None]
        fg = rng.uniform(0, 1, (len(idx), 1, 1, 3)).astype(np.float32)
        bg = rng.uniform(0, 1, (len(idx), 1, 1, 3)).astype(np.float32)
        # keep foreground and background apart so the pattern is visible
        close = np.abs(fg - bg).sum(axis=-1, keepdims=True) < 0.6
        fg = np.where(close, 1 - bg, fg)
        images[idx] = bg * (1 - m) + fg * m
    images += rng.normal(0, noise, images.shape).astype(np.float32)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


# ---------------------------------------------------------------------- CIFAR-10 on disk
def read_cifar_batch(file):
    """One CIFAR-10 "python version" batch file: returns uint8 ``(N, 32, 32, 3)`` images and
    int64 labels. The pickle is read with a restricted unpickler that builds only numpy
    arrays and plain containers; a file that is not such a batch raises ValueError."""
    from ..datasets._unpickle import CORRUPT_PICKLE_ERRORS, restricted_load

    with open(file, "rb") as f:
        try:
            d = restricted_load(f)
        except CORRUPT_PICKLE_ERRORS as e:
            raise ValueError(f"{file}: not a CIFAR-10 batch (corrupt pickle: "
                             f"{type(e).__name__}: {e})") from e
    return batch_arrays(d, file)


def batch_arrays(d, source):
    """Images and labels of an unpickled CIFAR-10 batch ``d`` (checked: a dict with
    ``data``, N rows of 3072 bytes, and ``labels``, N ints in 0..255)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: not a CIFAR-10 batch (a pickled {type(d).__name__}, "
                         "expected a dict)")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise ValueError(f"{source}: not a CIFAR-10 batch: 'data' must be a uint8 array of "
                         f"shape (N, 3072), got {what}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < 256
            for v in labels):
        raise ValueError(f"{source}: not a CIFAR-10 batch: 'labels' must be {len(data)} "
                         "class numbers")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, np.asarray(labels, dtype=np.int64).reshape(len(data))


def load_cifar10(path):
    """The CIFAR-10 "python version" batches in directory ``path``: returns ``(x_train,
    y_train), (x_test, y_test)``, uint8 ``(N, 32, 32, 3)`` images and int64 labels."""

    def read(name):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise SystemExit(f"{file}: not found; --data must be the folder holding the CIFAR-10 "
                             "python batches (data_batch_1 .. data_batch_5, test_batch)")
        return read_cifar_batch(file)

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return (x_train, y_train), read("test_batch")


# ---------------------------------------------------------------------- training
def prepare(images, mean, std):
    """``(N, H, W, 3)`` uint8 -> standardised float32 ``(N, 3, H, W)``."""
    x = images.astype(np.float32) / 255.0
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def flip_and_crop(pad=4):
    """Augmentation for ``Trainer.fit(transform=...)``: random horizontal flips and random
    32x32 crops of the image padded by ``pad`` pixels (zeros, i.e. the mean)."""

    def transform(xb, rng):
        n, _, h, w = xb.shape
        flip = rng.random(n) < 0.5
        xb = np.where(flip[:, None, None, None], xb[..., ::-1], xb)
        padded = np.pad(xb, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dy = rng.integers(0, 2 * pad + 1, n)
        dx = rng.integers(0, 2 * pad + 1, n)
        out = np.empty_like(xb)
        for i in range(n):
            out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        return out

    return transform


def build_model(name, width=None, growth_rate=None, seed=0, num_classes=10):
    from .. import zoo

    kwargs = {"variant": "cifar", "seed": seed, "num_classes": num_classes}
    if name.startswith(("resnet", "vgg")):
        kwargs["width"] = 16 if width is None else width
    elif width is not None:
        raise SystemExit(f"--width applies to the ResNets and VGGs, not {name}")
    if name.startswith("densenet") and growth_rate is not None:
        kwargs["growth_rate"] = growth_rate
    elif growth_rate is not None:
        raise SystemExit(f"--growth-rate applies to the DenseNets, not {name}")
    return zoo.get_model(name, **kwargs)


def parse_args(argv=None):
    from .. import zoo

    p = argparse.ArgumentParser(prog="python -m cnncore.examples.cifar_like",
                                description="Train a CIFAR-variant zoo model with cnncore.")
    p.add_argument("--model", default="resnet18", choices=zoo.list_models(),
                   help="zoo model name (default resnet18), built with variant='cifar'")
    p.add_argument("--width", type=int, default=None,
                   help="ResNet / VGG first-stage width (default 16; the literature's is 64)")
    p.add_argument("--growth-rate", type=int, default=None,
                   help="DenseNet growth rate (default: the CIFAR variant's 12)")
    p.add_argument("--data", default=None,
                   help="folder of the CIFAR-10 python batches (default: synthetic images)")
    p.add_argument("--n-train", type=int, default=None,
                   help="synthetic training images (default 2000); with --data: use the "
                        "first N training images (default: all 50000)")
    p.add_argument("--n-test", type=int, default=None,
                   help="synthetic test images (default 500; with --data the 10000 test images)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (2e-3)")
    p.add_argument("--augment", action="store_true",
                   help="random flips and 4-pixel crops (default: on with --data only)")
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads (default: $CNNCORE_NUM_THREADS or all cores)")
    p.add_argument("--seed", type=int, default=0, help="data, initialisation and shuffling seed")
    p.add_argument("--out", default=".", help="output directory (default: .)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if min(args.epochs, args.batch_size, args.n_train or 1, args.n_test or 1) < 1:
        p.error("--epochs, --batch-size, --n-train and --n-test must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        set_num_threads(args.threads)
    if args.data:
        (x_train, y_train), (x_test, y_test) = load_cifar10(args.data)
        if args.n_train is not None:
            x_train, y_train = x_train[:args.n_train], y_train[:args.n_train]
        source = f"CIFAR-10 from {args.data}"
        augment = True
    else:
        x_train, y_train = synthetic_cifar(args.n_train or 2000, seed=args.seed)
        x_test, y_test = synthetic_cifar(args.n_test or 500, seed=args.seed + 1)
        source = "synthetic CIFAR-like patterns (" + ", ".join(CLASSES) + ")"
        augment = False
    augment = augment or args.augment
    mean = x_train.reshape(-1, 3).mean(axis=0) / 255.0
    std = x_train.reshape(-1, 3).std(axis=0) / 255.0
    x_train, x_test = prepare(x_train, mean, std), prepare(x_test, mean, std)
    print(f"{source}: {len(x_train)} training and {len(x_test)} test images 3x32x32; "
          f"{get_num_threads()} threads")

    model = build_model(args.model, args.width, args.growth_rate, seed=args.seed)
    # The top-level layers and the totals (model.summary() lists every layer).
    text = model.summary(print_fn=None)
    print("\n".join(ln for ln in text.splitlines() if not ln.startswith("    ")))
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    optimizer = Adam(model.parameters(), lr=args.lr)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optimizer, seed=args.seed)
    start = time.perf_counter()
    history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                          validation_data=(x_test, y_test),
                          callbacks=[LearningRateScheduler(CosineLR(args.lr, total=steps),
                                                           per="batch")],
                          verbose=2 if args.quiet else 1,
                          transform=flip_and_crop() if augment else None)
    total = time.perf_counter() - start
    print(f"{total:.1f} s in all, {np.mean(history['images_per_sec']):.0f} training images/s")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.model}_cifar_like")
    model.save(stem + ".npz")
    print(f"saved model to {stem}.npz")
    stem_conv = first_conv(model)
    title = (f"{args.model} (CIFAR variant, {model.num_parameters():,} parameters, first conv "
             f"{stem_conv.out_channels} channels) on {'CIFAR-10' if args.data else 'synthetic data'}")
    if history.plot(stem + "_curves.png", title=title):
        print(f"saved training curves to {stem}_curves.png")
    else:
        print("matplotlib is not installed: skipping the training-curve PNG")
    result = trainer.evaluate(x_test, y_test)
    print(f"test accuracy: {result['accuracy']:.4f}")
    return result["accuracy"]


if __name__ == "__main__":
    main()
