"""Do subnormal (denormal) floats slow cnncore down?  Measure before flushing them to zero.

    PYTHONPATH=src python tools/denormal_study.py [--quick] [--threads N] [--repeats R]
                                                  [--adam-epochs E] [--sgd-epochs E]
                                                  [--worst-only]

(about 3 minutes at the defaults on an idle machine, 10 s with ``--quick``; MNIST is loaded
with :func:`cnncore.datasets.load_mnist`, from its cache or downloaded.)

A subnormal float32 is ``0 < |v| < np.finfo(np.float32).tiny`` (1.18e-38). On many x86
CPUs an operation that reads or produces one takes a microcode assist, tens to hundreds of
times slower than the normal path; setting the FTZ (flush-to-zero) and DAZ
(denormals-are-zero) bits of the thread's MXCSR register turns them into zeros instead.
Whether that matters depends on the CPU and on whether training produces subnormals at all,
so this script measures three things, printing the numbers as it goes:

1. **counts**: trains LeNet-5 (:func:`cnncore.lenet5`) on MNIST with Adam (the example's
   learning rate, no decay) and with SGD + momentum and no weight decay for longer; at the
   end of each epoch counts the subnormals in the weights, in the activations and gradients
   of one training step (every array :mod:`cnncore.functional` returns inside
   :func:`cnncore.bench.lenet.functional_step`), and in the optimiser state.
2. **trained vs fresh**: the LeNet-5 step (cnncore.functional, ``lr=0`` so the weights stay
   as they are) with fresh weights, with the trained weights, and with the trained weights
   whose subnormals were set to zero; the optimiser update (NumPy) with the trained state,
   with and without its subnormals. Interleaved repeats, medians, ratios.
3. **worst case**: every kernel of the LeNet step on inputs scaled by 1e-39 (all
   subnormal) against the same inputs unscaled, with FTZ/DAZ off and on. FTZ/DAZ is set with
   ``torch.set_flush_denormal`` (so "on" needs PyTorch), which sets the calling thread's
   MXCSR only: at 1 thread (the default) cnncore's OpenMP region runs on the calling thread
   (thread 0 of the region) and calls single-threaded OpenBLAS there, so every
   floating-point instruction of the call sees the flags; at more threads only thread 0
   does, and only "off" is a clean measurement.

Timings are medians of interleaved repeats in one process (another process may share the
machine): compare ratios, not absolute times.
"""

import argparse
import statistics
import sys
import time

import numpy as np

import cnncore
from cnncore import functional as F
from cnncore.bench import lenet
from cnncore.optim import SGD, Adam

TINY32 = np.finfo(np.float32).tiny


def subnormal_count(a):
    """Number of subnormal values of a float array: ``0 < |v| < finfo(dtype).tiny``."""
    a = np.abs(np.asarray(a))
    return int(np.count_nonzero((a > 0) & (a < np.finfo(a.dtype).tiny)))


def flush(a):
    """A copy of ``a`` with its subnormals set to zero."""
    return np.where(np.abs(a) < np.finfo(a.dtype).tiny, a.dtype.type(0), a)


class Recorder:
    """Stands in for :mod:`cnncore.functional`: calls it and keeps every array returned, as
    ``(function name, array)`` in :attr:`arrays`."""

    def __init__(self, module):
        self._module = module
        self.arrays = []

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            for o in out if isinstance(out, tuple) else (out,):
                if isinstance(o, np.ndarray) and o.ndim:
                    self.arrays.append((name, o))
            return out

        return call


class Tally:
    """Subnormal and total counts of a group of arrays."""

    def __init__(self):
        self.sub = self.total = 0

    def add(self, a):
        self.sub += subnormal_count(a)
        self.total += np.asarray(a).size

    def __str__(self):
        return f"{self.sub}/{self.total}"


def params_of(model):
    """The model's weights as the ``{name: array}`` dict of :mod:`cnncore.bench.lenet`."""
    values = [p.data for p in model.parameters()]
    assert [v.shape for v in values] == list(lenet.PARAM_SHAPES.values())
    return {name: v.copy() for name, v in zip(lenet.PARAM_SHAPES, values)}


def recorded_step(params, x, y):
    """Activations and gradients of one training step on ``(x, y)`` (weights unchanged)."""
    rec = Recorder(F)
    lenet.functional_step(rec, {k: v.copy() for k, v in params.items()}, x, y, lr=0.0)()
    acts, grads = Tally(), Tally()
    for name, a in rec.arrays:
        (grads if name.endswith("_backward") or name == "softmax_cross_entropy"
         else acts).add(a)
    return acts, grads


def train(name, opt_factory, epochs, data, batch, seed, probe):
    """Train LeNet-5, printing the subnormal counts after every epoch; returns
    ``(model, optimizer)``."""
    x, y = data
    model = cnncore.lenet5(seed=seed)
    opt = opt_factory(model.parameters())
    rng = np.random.default_rng(seed)
    print(f"\n{name}: {epochs} epoch(s) of {len(x) // batch} steps, batch {batch}")
    print(f"  {'epoch':>5} {'loss':>8} {'s':>6}   subnormals/total: {'weights':>14} "
          f"{'activations':>16} {'gradients':>14} {'optimizer state':>16}")
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss, g = F.softmax_cross_entropy(model.forward(x[idx]), y[idx])
            model.backward(g)
            opt.step()
            losses.append(float(loss))
        seconds = time.perf_counter() - t0
        weights, state = Tally(), Tally()
        for p in model.parameters():
            weights.add(p.data)
        for bufs in opt._state.values():
            for b in bufs:
                state.add(b)
        acts, grads = recorded_step(params_of(model), *probe)
        print(f"  {epoch:>5} {np.mean(losses):8.4f} {seconds:6.1f}   {'':17} {str(weights):>14} "
              f"{str(acts):>16} {str(grads):>14} {str(state):>16}")
    for slot, bufs in opt._state.items():
        print(f"  {slot} subnormals by parameter: " + ", ".join(
            f"{name} {subnormal_count(b)}/{b.size}" for name, b in zip(lenet.PARAM_SHAPES, bufs)))
    return model, opt


def interleaved(cases, repeats):
    """Median seconds of each zero-argument callable, the cases taking turns; each is called
    once untimed first."""
    for fn in cases.values():
        fn()
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def trained_vs_fresh(model, opt, probe, repeats, threads):
    print(f"\nLeNet-5 step (cnncore.functional, batch {len(probe[0])}, {threads} thread(s), "
          f"lr=0), median of {repeats} interleaved repeats:")
    trained = params_of(model)
    flushed = {k: flush(v) for k, v in trained.items()}
    fresh = lenet.init_params()
    steps = {label: lenet.functional_step(F, p, *probe, lr=0.0, n_threads=threads)
             for label, p in (("fresh", fresh), ("trained", trained),
                              ("trained, subnormals zeroed", flushed))}
    med = interleaved(steps, repeats)
    for k, v in med.items():
        print(f"  {k:28s} {1e3 * v:8.3f} ms   /fresh {v / med['fresh']:5.2f}")
    print("  weights with subnormals: trained "
          f"{sum(subnormal_count(v) for v in trained.values())}, fresh "
          f"{sum(subnormal_count(v) for v in fresh.values())}")

    # The optimiser update (NumPy, on the calling thread, outside the kernels).
    if not opt._state:
        return
    saved = {k: [b.copy() for b in v] for k, v in opt._state.items()}
    data = [p.data.copy() for p in opt.params]
    zeroed = {k: [flush(b) for b in v] for k, v in saved.items()}
    n_sub = sum(subnormal_count(b) for v in saved.values() for b in v)

    def update(state):
        def run():
            for k, v in state.items():
                for dst, src in zip(opt._state[k], v):
                    dst[...] = src
            for p, d in zip(opt.params, data):
                p.data[...] = d
            opt.step()
        return run

    med = interleaved({"trained state": update(saved),
                       "trained state, subnormals zeroed": update(zeroed)}, repeats)
    print(f"{type(opt).__name__} update of the trained state ({n_sub} subnormals, state "
          f"restored before each call, gradients of the last step):")
    base = med["trained state, subnormals zeroed"]
    for k, v in med.items():
        print(f"  {k:34s} {1e3 * v:8.3f} ms   /zeroed {v / base:5.2f}")


def kernel_calls(batch, seed=0):
    """``{name: (fn, arrays)}``: every kernel of the LeNet-5 step on LeNet's shapes; ``fn``
    takes the arrays that get scaled (activations and incoming gradients; the weights stay
    normal) and ``n_threads``."""
    rng = np.random.default_rng(seed)
    p = lenet.init_params(seed=seed)
    f32 = np.float32

    def r(*shape):
        return rng.standard_normal(shape).astype(f32)

    labels = rng.integers(0, 10, batch)
    return {
        "conv1 fwd": (lambda x, t: F.conv2d(x, p["w1"], p["b1"], 1, 2, n_threads=t),
                      (r(batch, 1, 28, 28),)),
        "conv1 bwd": (lambda g, x, t: F.conv2d_backward(g, x, p["w1"], 1, 2, n_threads=t),
                      (r(batch, 6, 28, 28), r(batch, 1, 28, 28))),
        "conv2 fwd": (lambda x, t: F.conv2d(x, p["w2"], p["b2"], 1, 0, n_threads=t),
                      (r(batch, 6, 14, 14),)),
        "conv2 bwd": (lambda g, x, t: F.conv2d_backward(g, x, p["w2"], 1, 0, n_threads=t),
                      (r(batch, 16, 10, 10), r(batch, 6, 14, 14))),
        "relu fwd": (lambda x, t: F.relu(x, n_threads=t), (r(batch, 6, 28, 28),)),
        "relu bwd": (lambda g, x, t: F.relu_backward(g, x, n_threads=t),
                     (r(batch, 6, 28, 28), r(batch, 6, 28, 28))),
        "maxpool fwd": (lambda x, t: F.max_pool2d(x, 2, 2, n_threads=t),
                        (r(batch, 6, 28, 28),)),
        "maxpool bwd": (lambda g, x, t: F.max_pool2d_backward(g, x, 2, 2, n_threads=t),
                        (r(batch, 6, 14, 14), r(batch, 6, 28, 28))),
        "linear fwd": (lambda x, t: F.linear(x, p["w3"], p["b3"], n_threads=t),
                       (r(batch, 400),)),
        "linear bwd": (lambda g, x, t: F.linear_backward(g, x, p["w3"], n_threads=t),
                       (r(batch, 120), r(batch, 400))),
        "softmax xent": (lambda z, t: F.softmax_cross_entropy(z, labels, n_threads=t),
                         (r(batch, 10),)),
    }


def worst_case(batch, repeats, threads, torch):
    scale = np.float32(1e-39)
    modes = [("off", False)] + ([("on", True)] if torch is not None else [])
    print(f"\nworst case: LeNet kernels, batch {batch}, inputs x 1e-39 (all subnormal) vs "
          f"unscaled, {threads} thread(s), median of {repeats} interleaved repeats")
    if torch is None:
        print("  (PyTorch is not installed: FTZ/DAZ 'on' is not measured)")
    elif threads > 1:
        print("  (FTZ/DAZ 'on' applies to the calling thread only: with more than one "
              "thread the others still see subnormals)")
    print(f"  {'kernel':13s} {'normal ms':>9} {'subn ms':>9} {'subn/normal':>11}"
          + ("   FTZ on: normal ms  subn ms  subn/normal  on/off normal  on/off subn"
             if len(modes) > 1 else ""))
    totals = {(m, s): 0.0 for m, _ in modes for s in ("normal", "subn")}
    calls = kernel_calls(batch)
    # Scaled before any FTZ/DAZ switching: with DAZ on, the subnormal scale would read as 0.
    scaled = {name: tuple(a * scale for a in arrays) for name, (_, arrays) in calls.items()}
    assert all(subnormal_count(a) > 0.99 * a.size for v in scaled.values() for a in v)
    try:
        for name, (fn, arrays) in calls.items():
            tiny = scaled[name]
            cases = {}
            for m, on in modes:
                for label, args in (("normal", arrays), ("subn", tiny)):
                    def call(on=on, args=args):
                        if torch is not None:
                            torch.set_flush_denormal(on)
                        fn(*args, threads)
                    cases[(m, label)] = call
            med = interleaved(cases, repeats)
            if torch is not None:
                torch.set_flush_denormal(False)
            for k, v in med.items():
                totals[k] += v
            print(_worst_row(name, med, modes))
    finally:
        if torch is not None:
            torch.set_flush_denormal(False)
    print(_worst_row("sum", totals, modes))
    if torch is not None:
        print("  (with DAZ on, the scaled inputs read as zeros: every pooling window is a tie, "
              "which makes max-pool backward's\n   argmax search predictable; compare "
              "'subn/normal' with FTZ off for the cost of subnormals themselves)")


def _worst_row(name, med, modes):
    line = (f"  {name:13s} {1e3 * med[('off', 'normal')]:9.3f} {1e3 * med[('off', 'subn')]:9.3f}"
            f" {med[('off', 'subn')] / med[('off', 'normal')]:11.2f}")
    if len(modes) > 1:
        line += (f"   {'':9}{1e3 * med[('on', 'normal')]:9.3f} {1e3 * med[('on', 'subn')]:8.3f}"
                 f" {med[('on', 'subn')] / med[('on', 'normal')]:12.2f}"
                 f" {med[('on', 'normal')] / med[('off', 'normal')]:14.2f}"
                 f" {med[('on', 'subn')] / med[('off', 'subn')]:12.2f}")
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 Adam and 2 SGD epochs on 12000 images, 15 repeats (about 10 s)")
    p.add_argument("--adam-epochs", type=int, default=None, help="default 3 (--quick 1)")
    p.add_argument("--sgd-epochs", type=int, default=None, help="default 15 (--quick 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="kernel threads for training and the step timings (default 1: on a "
                        "shared machine a descheduled thread stalls a whole parallel region, "
                        "and the cost of a subnormal does not depend on the thread count)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 41)")
    p.add_argument("--worst-only", action="store_true",
                   help="skip the training runs: part 3 only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    adam_epochs = args.adam_epochs if args.adam_epochs is not None else (1 if quick else 3)
    sgd_epochs = args.sgd_epochs if args.sgd_epochs is not None else (2 if quick else 15)
    repeats = args.repeats or (15 if quick else 41)
    cnncore.set_num_threads(args.threads)
    threads = cnncore.get_num_threads()
    try:
        import torch
    except ImportError:
        torch = None

    print(f"cnncore {cnncore.__version__}, {threads} thread(s); subnormal float32: "
          f"0 < |v| < {TINY32:.3g}; counts are subnormal/total values")
    if not args.worst_only:
        train_and_time(args, quick, adam_epochs, sgd_epochs, repeats, threads)
    worst_case(64, repeats, threads, torch)
    return 0


def train_and_time(args, quick, adam_epochs, sgd_epochs, repeats, threads):
    from cnncore.datasets import load_mnist
    from cnncore.examples.mnist import prepare

    (xtr, ytr), _ = load_mnist()
    xtr, ytr = prepare(xtr), ytr.astype(np.int64)
    if quick:
        xtr, ytr = xtr[:12000], ytr[:12000]
    probe = (np.ascontiguousarray(xtr[:64]), ytr[:64])

    model, opt = train("Adam lr 2e-3", lambda ps: Adam(ps, lr=2e-3), adam_epochs,
                       (xtr, ytr), 64, args.seed, probe)
    trained_vs_fresh(model, opt, probe, repeats, threads)
    model, opt = train("SGD lr 0.02 momentum 0.9, no weight decay",
                       lambda ps: SGD(ps, lr=0.02, momentum=0.9), sgd_epochs,
                       (xtr, ytr), 64, args.seed, probe)
    trained_vs_fresh(model, opt, probe, repeats, threads)


if __name__ == "__main__":
    sys.exit(main())
