#!/usr/bin/env python
"""Smoke test of an installed cnncore (a wheel in a fresh venv, or a cibuildwheel test env).

Usage::

    python tools/wheel_smoke_test.py [--no-compiler] [--allow-source-tree]

Checks, in a few seconds:

1. ``cnncore`` is imported from the environment (``sys.prefix``), not from a source tree
   (``--allow-source-tree`` turns this off); with ``--no-compiler``, that no C compiler is
   reachable (``$CC``, ``cc``, ``gcc``, ``clang`` on ``$PATH``): the wheel needs none.
2. ``conv2d`` forward and backward (stride, padding, dilation, groups, bias) against the
   NumPy twin :mod:`cnncore.reference`, in float32 and float64, and bit-identical results
   for 1 and 2 threads; ReLU and max-pooling likewise.
3. A few training steps that must lower the loss: a tiny conv net trained with
   :mod:`cnncore.layers` + :class:`cnncore.trainer.Trainer` when they exist, and always a
   few hand-written SGD steps through :mod:`cnncore.functional`.
4. ``fork()`` after a parallel region (the child must not hang) and, with ``--with-torch``,
   cnncore and PyTorch in one process, imported in either order (two libgomp copies).
5. Prints ``cnncore.show_config()``.

Exits non-zero (AssertionError) on any failure. Uses only numpy and cnncore.
"""

import argparse
import os
import shutil
import sys
import time

import numpy as np

CONV_CASES = [  # (x shape, weight shape, stride, padding, dilation, groups, bias)
    ((2, 3, 9, 9), (4, 3, 3, 3), 1, 1, 1, 1, True),
    ((3, 4, 11, 10), (6, 2, 3, 2), 2, (1, 0), 1, 2, False),
    ((2, 2, 12, 12), (3, 2, 3, 3), 1, "same", 2, 1, True),
    ((2, 4, 8, 8), (4, 1, 3, 3), 1, 1, 1, 4, True),  # depthwise
    ((1, 5, 7, 7), (2, 5, 1, 1), 1, 0, 1, 1, True),  # 1x1
]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def check_location(allow_source_tree):
    import cnncore
    path = os.path.realpath(cnncore.__file__)
    prefix = os.path.realpath(sys.prefix)
    print(f"cnncore {cnncore.__version__} imported from {os.path.dirname(path)}")
    if not allow_source_tree:
        assert path.startswith(prefix + os.sep), (
            f"cnncore was imported from {path}, outside this environment ({prefix}): the test "
            "must run against the installed wheel, not a source tree")
        assert not os.path.exists(os.path.join(os.path.dirname(path), "_kernels", "conv.pyx")), \
            "the installed package contains .pyx sources: the wheel should not ship them"


def check_no_compiler():
    cc = os.environ.get("CC", "")
    found = {name: shutil.which(name) for name in ("cc", "gcc", "clang", "c++", "g++")}
    if cc:
        found["$CC"] = shutil.which(cc.split()[0])
    found = {k: v for k, v in found.items() if v}
    assert not found, f"a C compiler is reachable, the wheel test must run without one: {found}"
    print("no C compiler reachable: OK")


def _close(a, b, dtype, what):
    assert a.dtype == dtype, f"{what}: dtype {a.dtype}, expected {np.dtype(dtype)}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs reference {b.shape}"
    scale = max(1.0, float(np.abs(b).max()))
    tol = TOL[dtype]
    err = float(np.abs(a - b).max())
    assert err <= tol["atol"] * scale + tol["rtol"] * scale, \
        f"{what}: max |cnncore - reference| = {err:.3g} (scale {scale:.3g})"
    return err


def check_kernels():
    from cnncore import functional as F
    from cnncore import reference as R
    rng = np.random.default_rng(0)
    worst = {np.float32: 0.0, np.float64: 0.0}
    for dtype in (np.float32, np.float64):
        for xs, ws, s, p, d, g, with_bias in CONV_CASES:
            x = rng.standard_normal(xs).astype(dtype)
            w = rng.standard_normal(ws).astype(dtype)
            b = rng.standard_normal(ws[0]).astype(dtype) if with_bias else None
            kw = dict(stride=s, padding=p, dilation=d, groups=g)
            what = f"conv2d x{xs} w{ws} {kw} {np.dtype(dtype)}"
            y = F.conv2d(x, w, b, **kw)
            worst[dtype] = max(worst[dtype], _close(y, R.conv2d(x, w, b, **kw), dtype, what))
            gy = rng.standard_normal(y.shape).astype(dtype)
            grads = F.conv2d_backward(gy, x, w, **kw)
            ref = R.conv2d_backward(gy, x, w, **kw)
            for name, a, r in zip(("grad_x", "grad_w", "grad_b"), grads, ref):
                worst[dtype] = max(worst[dtype], _close(a, r, dtype, f"{what} {name}"))
            # threads: the same bits for 1 and 2 threads (fixed-order reductions)
            y1, y2 = F.conv2d(x, w, b, n_threads=1, **kw), F.conv2d(x, w, b, n_threads=2, **kw)
            g1 = F.conv2d_backward(gy, x, w, n_threads=1, **kw)
            g2 = F.conv2d_backward(gy, x, w, n_threads=2, **kw)
            assert np.array_equal(y1, y2) and all(np.array_equal(a, c) for a, c in zip(g1, g2)), \
                f"{what}: results differ between 1 and 2 threads"
        x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
        gy = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
        _close(F.relu(x), R.relu(x), dtype, "relu")
        _close(F.relu_backward(x, x), R.relu_backward(x, x), dtype, "relu_backward")
        _close(F.max_pool2d(x, 2), R.max_pool2d(x, 2), dtype, "max_pool2d")
        _close(F.max_pool2d_backward(gy, x, 2), R.max_pool2d_backward(gy, x, 2), dtype,
               "max_pool2d_backward")
    print(f"conv2d/relu/max_pool2d forward+backward vs cnncore.reference: OK "
          f"({len(CONV_CASES)} conv cases; max abs error float32 {worst[np.float32]:.2g}, "
          f"float64 {worst[np.float64]:.2g}; 1 vs 2 threads bit-identical)")


def _toy_data(n=96, seed=0):
    """Three classes of 8x8 images: a bright horizontal bar, vertical bar or centre blob."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = 0.3 * rng.standard_normal((n, 1, 8, 8))
    rows = rng.integers(1, 7, n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, rows[i], :] += 2.0
        elif y[i] == 1:
            x[i, 0, :, rows[i]] += 2.0
        else:
            x[i, 0, 2:6, 2:6] += 1.0
    return x.astype(np.float32), y


def train_functional(steps=30, lr=0.1):
    """Hand-written SGD on conv(1->4, 3x3, same) -> ReLU -> maxpool 2 -> linear(64->3)."""
    from cnncore import functional as F
    x, y = _toy_data()
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((4, 1, 3, 3)) / 3).astype(np.float32)
    b1 = np.zeros(4, np.float32)
    w2 = (rng.standard_normal((3, 64)) / 8).astype(np.float32)
    b2 = np.zeros(3, np.float32)
    losses = []
    for _ in range(steps):
        h = F.conv2d(x, w1, b1, padding="same")
        a = F.relu(h)
        p = F.max_pool2d(a, 2)
        logits = F.linear(p.reshape(len(x), -1), w2, b2)
        loss, g = F.softmax_cross_entropy(logits, y)
        losses.append(float(loss))
        gp, gw2, gb2 = F.linear_backward(g, p.reshape(len(x), -1), w2)
        ga = F.max_pool2d_backward(gp.reshape(p.shape), a, 2)
        gh = F.relu_backward(ga, h)
        _, gw1, gb1 = F.conv2d_backward(gh, x, w1, padding="same")
        for param, grad in ((w1, gw1), (b1, gb1), (w2, gw2), (b2, gb2)):
            param -= lr * grad
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], f"functional SGD: loss did not decrease: {losses}"
    print(f"functional SGD, {steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}: OK")


def train_layers(epochs=8):
    """The same task with cnncore.layers + Trainer, if this version has them."""
    try:
        from cnncore.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
        from cnncore.losses import SoftmaxCrossEntropy
        from cnncore.optim import SGD
        from cnncore.trainer import Trainer
    except ImportError as exc:
        print(f"cnncore.layers / Trainer not available ({exc}): skipped the Trainer run")
        return
    x, y = _toy_data()
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(64, 3)).initialize(seed=0)
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05,
                                                        momentum=0.9))
    history = trainer.fit(x, y, epochs=epochs, batch_size=16, seed=0, verbose=0)
    losses = [float(v) for v in history["loss"]]
    acc = float(history["accuracy"][-1]) if "accuracy" in history else float("nan")
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], f"Trainer: loss did not decrease: {losses}"
    print(f"layers + Trainer, {epochs} epochs: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"accuracy {acc:.3f}: OK")


_FORK_CHILD = """
import os, sys, time
import numpy as np
import cnncore.functional as F
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
y0 = F.conv2d(x, w, padding=1, n_threads=2)  # the parent runs a team of 2 threads
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(F.conv2d(x, w, padding=1, n_threads=2), y0) else 3)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit("the fork()ed child hung")
"""

_WITH_TORCH = """
import {first}, {second}
import numpy as np, torch, cnncore
import cnncore.functional as F
torch.set_num_threads(2)
cnncore.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
for _ in range(3):
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
    np.testing.assert_allclose(F.conv2d(x, w, padding=1), want.numpy(), rtol=1e-4, atol=1e-4)
assert (cnncore.get_num_threads(), torch.get_num_threads()) == (2, 2)
"""


def check_processes(with_torch):
    """fork() after a parallel region (the child must not hang) and, ``with_torch``, cnncore
    beside PyTorch in one process, imported in either order: this wheel carries its own
    copy of libgomp, PyTorch's wheel another."""
    import subprocess
    if hasattr(os, "fork"):
        subprocess.run([sys.executable, "-c", _FORK_CHILD], check=True, timeout=120)
        print("fork() after a parallel region: the child ran its convolution: OK")
    if with_torch:
        for first, second in (("torch", "cnncore"), ("cnncore", "torch")):
            code = _WITH_TORCH.format(first=first, second=second)
            subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
        print("cnncore and torch in one process, both import orders: OK")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-compiler", action="store_true",
                        help="also assert that no C compiler is reachable")
    parser.add_argument("--with-torch", action="store_true",
                        help="also run cnncore beside PyTorch (installed) in one process")
    parser.add_argument("--allow-source-tree", action="store_true",
                        help="do not require cnncore to be installed in sys.prefix")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    check_location(args.allow_source_tree)
    if args.no_compiler:
        check_no_compiler()
    check_kernels()
    train_functional()
    train_layers()
    check_processes(args.with_torch)
    import cnncore
    print("--- cnncore.show_config() ---")
    cnncore.show_config()
    print(f"wheel smoke test passed in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
