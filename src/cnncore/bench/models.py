"""Whole networks: the zoo models against their PyTorch twins (``--ops models``).

For each network (:data:`NETWORKS`) and each case (:class:`Case`), cnncore and the
:func:`cnncore.interop.to_torch` twin of the same model (same weights) are timed at the
same thread count:

- ``infer``: ``model.eval()``; cnncore ``model.forward(x)`` inside
  :class:`cnncore.memory_pool` (as ``Trainer.predict`` runs it), torch ``tmodel(x)`` under
  ``torch.inference_mode()``;
- ``train``: one SGD step (momentum 0.9, lr 0.01) on a batch with integer labels:
  cnncore as ``Trainer.fit`` does it (zero the gradients, ``forward``,
  :class:`~cnncore.losses.SoftmaxCrossEntropy`, ``backward_params``,
  :class:`~cnncore.optim.SGD`, all inside a memory pool), torch ``opt.zero_grad()``,
  ``nn.CrossEntropyLoss``, ``loss.backward()``, ``torch.optim.SGD.step()``.

Outside the timed region the outputs are compared: inference the logits of the last
timed call; training one extra step first, with the Dropout layers switched off on both
sides, whose logits (and parameter gradients, reported as ``grad_rel_error``) must agree.
The error is ``max |cnncore - torch| / max |torch|`` (logits: at most 1e-4 in float32, 1e-9
in float64; gradients: :data:`GRAD_TOLERANCE`): the row's check is ``ok`` or
``MISMATCH``. The gradients of a float32 row are checked by one more step in float64
(``grad_rel_error_f64``, :func:`float64_grad_error`: float32 ReLU masks may differ where a
pre-activation is within rounding of 0); ``grad_rel_error`` is reported, not judged. The classifier head, which the zoo starts at zero, is drawn at random so
that the logits are not all zero.

Times are medians. By default (``interleave=True``) cnncore and torch each first run their
check call(s) and ``warmup`` warm-up calls (at least one) in a block of their own; then
they are timed in interleaved rounds, each round running cnncore and torch in turn:
``rewarm`` (1) untimed call, then one call timed alone with
``time.perf_counter``, back to back (the untimed call absorbs the switch from the other
runtime: its spinning OpenMP threads, cold caches; see
:func:`~cnncore.bench.timing.time_interleaved`; ``pause``, 0 by default, sleeps after each
timed call): the speed of a shared machine drifts
by up to 30 % within a minute, and interleaving lets every implementation see the same
drift, so the ratios are steadier than block timings. Each median comes from that
implementation's own calls; at most ``repeats`` rounds, and the rounds stop once their
summed call times exceed ``budget`` seconds per implementation (at least ``min_repeats``
rounds: ``cut`` in the summary); short calls get more rounds, up to 100, until each
implementation's timed calls sum to ``min_time`` seconds (``rounds`` in the summary); ``minor_faults_per_call`` counts the page faults around
each implementation's own calls only. ``interleave=False`` (``--no-interleave``) times each
implementation in one block of ``warmup`` + ``repeats`` calls, as before
(:func:`~cnncore.bench.timing.time_budgeted`). ONNX Runtime is always timed in one block of
its own, after the others: its workers keep spinning after a run and slowed the next
cnncore call 2x inside the rounds.

Memory: ``peak_mb`` is the peak resident set size during an implementation's block above
the resident size before it, once the model, its twin, the ONNX Runtime session and the
batch are built and freed C-heap memory is returned to the system (``malloc_trim``):
activations, temporaries, cached pool blocks, gradients and momentum buffers, measured in
this process. Peak-memory blocks cannot be interleaved, so with interleaving it covers the
check and warm-up calls (where the memory pool reaches its peak), not the timed rounds;
with ``--no-interleave`` all the calls. The cnncore memory pool stays entered from
cnncore's block to the end of the rounds (leaving it would drop its cached blocks), so the
torch calls run while it is NumPy's allocator: torch does not allocate its tensors through
NumPy. A row too big to hold both peaks at once is timed in blocks
(INTERLEAVE_MEMORY_SHARE). :func:`measure_here`
(``--models-memory``) measures the peak in a fresh process per case and implementation
instead.
"""

import contextlib
import ctypes
import gc
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import memory as _mem
from .timing import time_budgeted, time_interleaved

__all__ = ["Net", "Case", "NETWORKS", "plan", "select_networks", "build_model", "run_case",
           "measure", "measure_here", "IMPLS"]

IMPLS = ("cnncore", "torch")
LR, MOMENTUM = 0.01, 0.9
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
#: Parameter gradients: float32 rows are judged by a float64 step (float64_grad_error), as
#: a ReLU input within rounding of 0 flips its mask in float32 and moves a few gradients by
#: up to 1e-1 relative, in either library (ResNet-18 at 224, batch 8: 3 flips, 2.6e-3 overall,
#: 2.2e-2 on one layer's weights); the float32 figure stays in the row as information.
GRAD_TOLERANCE = {"float32": 1e-2, "float64": 1e-8}
FLOAT64_CHECK_BATCH = 8
#: Interleaved rounds keep cnncore's memory pool (its peak) while torch runs; a row whose
#: cnncore peak, counted twice (torch's is similar), exceeds this share of the memory
#: available at its start is timed in blocks instead, the pool left before torch runs.
INTERLEAVE_MEMORY_SHARE = 0.6


@dataclass(frozen=True)
class Net:
    """A zoo network: ``id`` (``--models`` name), ``label``, zoo name and builder kwargs,
    the input shape (no batch axis) and whether it is ImageNet-sized (smaller batches)."""

    id: str
    label: str
    zoo_name: str
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple = (3, 224, 224)
    large: bool = True

    def describe_input(self):
        return "x".join(str(s) for s in self.input_shape)


@dataclass(frozen=True)
class Case:
    """One row: a network, ``mode`` ``"infer"`` or ``"train"`` and a batch size."""

    net: Net
    mode: str
    batch: int

    @property
    def name(self):
        return f"{self.net.id}-{self.mode}-b{self.batch}"


def _cifar(zoo_name, label, **kw):
    return Net(f"{zoo_name}-cifar", f"{label} CIFAR", zoo_name, dict(variant="cifar", **kw),
               (3, 32, 32), large=False)


NETWORKS = (
    Net("lenet5", "LeNet-5", "lenet5", {}, (1, 28, 28), large=False),
    Net("alexnet", "AlexNet", "alexnet", {}, (3, 227, 227)),
    _cifar("alexnet", "AlexNet"),
    Net("vgg11", "VGG-11", "vgg11"),
    _cifar("vgg11", "VGG-11"),
    Net("vgg16_bn", "VGG-16-BN", "vgg16_bn"),
    _cifar("vgg16_bn", "VGG-16-BN"),
    Net("resnet18", "ResNet-18", "resnet18"),
    _cifar("resnet18", "ResNet-18"),
    Net("resnet50", "ResNet-50", "resnet50"),
    _cifar("resnet50", "ResNet-50"),
    Net("densenet121", "DenseNet-121", "densenet121"),
    _cifar("densenet121", "DenseNet-121"),
)
_BY_ID = {n.id: n for n in NETWORKS}

#: --quick without --models: about two minutes on 2 cores.
QUICK = (("lenet5", ("infer", 1), ("infer", 16), ("train", 64)),
         ("resnet18-cifar", ("infer", 1), ("infer", 16), ("train", 64)),
         ("resnet18", ("infer", 1)),
         ("vgg11-cifar", ("infer", 1), ("infer", 16), ("train", 64)))
#: --smoke: a few seconds (a narrow ResNet-18 so that residual blocks and BatchNorm run).
SMOKE_RESNET = Net("resnet18-cifar", "ResNet-18 CIFAR w8", "resnet18",
                   {"variant": "cifar", "width": 8}, (3, 32, 32), large=False)
SMOKE = ((_BY_ID["lenet5"], ("infer", 1), ("train", 8)),
         (SMOKE_RESNET, ("infer", 2), ("train", 4)))


def select_networks(names):
    """Networks named by ``names`` (ids, or a model name for all its variants: ``resnet18``
    is ``resnet18`` and ``resnet18-cifar``), in table order; ValueError on unknown names."""
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if not any(net.id == n or net.id.startswith(n + "-")
                                           for net in NETWORKS)]
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(n.id for n in NETWORKS)}")
    return [net for net in NETWORKS
            if any(net.id == n or net.id.startswith(n + "-") for n in names)]


def plan(mode, names=None):
    """The cases of a run: ``mode`` ``"full"``, ``"quick"`` or ``"smoke"``; ``names`` (a
    list, or None for the mode's default set) filters the networks. Full: inference at
    batch 1 and 16, a training step at batch 64 (32 for ImageNet-sized networks); quick:
    the same with training batch 8 for ImageNet-sized networks."""
    if mode == "smoke" and not names:
        return [Case(net, m, b) for net, *cases in SMOKE for m, b in cases]
    if mode == "quick" and not names:
        return [Case(_BY_ID[i], m, b) for i, *cases in QUICK for m, b in cases]
    nets = select_networks(names) if names else list(NETWORKS)
    large_train = {"full": 32, "quick": 8, "smoke": 2}[mode]
    batches = {"full": (1, 16), "quick": (1, 16), "smoke": (1,)}[mode]
    small_train = 64 if mode != "smoke" else 4
    out = []
    for net in nets:
        out += [Case(net, "infer", b) for b in batches]
        out.append(Case(net, "train", large_train if net.large else small_train))
    return out


# ----------------------------------------------------------------------------- building
def build_model(net, dtype="float32", seed=0):
    """The cnncore model of ``net`` with a random (not zero) classifier head."""
    from .. import zoo
    from ..layers import Linear
    model = zoo.get_model(net.zoo_name, seed=seed, dtype=np.dtype(dtype), **net.kwargs)
    head = [layer for _, layer in model.named_layers() if isinstance(layer, Linear)][-1]
    rng = np.random.default_rng([seed, 1])
    bound = np.sqrt(6.0 / head.in_features)
    head.weight.data[...] = rng.uniform(-bound, bound, head.weight.shape)
    return model


def make_batch(net, batch, dtype="float32", seed=0):
    """Seeded inputs ``(batch, *input_shape)`` and int64 labels."""
    rng = np.random.default_rng([seed, batch, len(net.id)])
    x = rng.standard_normal((batch,) + tuple(net.input_shape)).astype(dtype)
    classes = 10 if net.id.endswith("cifar") or net.id == "lenet5" else 1000
    return x, rng.integers(0, classes, batch).astype(np.int64)


def cnncore_call(model, mode, x, labels):
    """The zero-argument cnncore call of a case (returns the logits)."""
    if mode == "infer":
        model.eval()
        return lambda: model.forward(x)
    from ..losses import SoftmaxCrossEntropy
    from ..optim import SGD
    model.train()
    params = model.parameters()
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(params, lr=LR, momentum=MOMENTUM)
    labels = loss_fn.prepare_targets(labels)

    def step():  # Trainer.fit's step
        for p in params:
            p.grad.fill(0)
        out = model.forward(x)
        loss_fn.forward(out, labels)
        model.backward_params(loss_fn.backward())
        opt.step()
        return out
    return step


def torch_call(torch, tmodel, mode, x, labels):
    """The zero-argument torch call of a case (returns the logits)."""
    xt = torch.from_numpy(x)
    if mode == "infer":
        tmodel.eval()

        def infer():
            with torch.inference_mode():
                return tmodel(xt)
        return infer
    tmodel.train()
    yt = torch.from_numpy(labels)
    opt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        out = tmodel(xt)
        loss_fn(out, yt).backward()
        opt.step()
        return out.detach()
    return step


def rel_error(a, b):
    """``max |a - b| / max |b|`` in float64 (0 when both are all zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    return diff / scale if scale else (0.0 if diff == 0 else float("inf"))


@contextlib.contextmanager
def _no_dropout(model, tmodel):
    """Dropout off on both sides (their masks cannot agree) for the checking step."""
    from ..layers import Dropout
    drops = [layer for _, layer in model.named_layers() if isinstance(layer, Dropout)]
    tdrops = [m for m in tmodel.modules() if type(m).__name__ == "Dropout"]
    for d in drops + tdrops:
        d.training = False
    try:
        yield
    finally:
        for d in drops + tdrops:
            d.training = True


def float64_grad_error(case, torch, seed=0):
    """The training check of a float32 row, redone in float64: one step of the model and its
    twin, both in float64, and their :func:`grad_error`. In float32 a ReLU whose input lies
    within rounding of 0 (3 of ResNet-18's 3.3 million pre-activations at batch 8) takes the
    other branch on one side, which moves a few gradients by up to 1e-1 relative, in
    cnncore as in torch against float64; in float64 the two agree to about 1e-14, so a real
    difference stands out."""
    from .. import interop
    model = build_model(case.net, "float64", seed)
    # At most FLOAT64_CHECK_BATCH samples: VGG-16-BN's float64 step at batch 32, with its
    # twin's, took more than the 24 GB of the benchmark machine (killed by the OOM killer).
    x, labels = make_batch(case.net, min(case.batch, FLOAT64_CHECK_BATCH), "float64", seed)
    tmodel = interop.to_torch(model)
    step, tstep = cnncore_call(model, "train", x, labels), torch_call(torch, tmodel, "train",
                                                                      x, labels)
    with _no_dropout(model, tmodel):  # after the calls are made: they switch to train()
        step()
        grads = {name: p.grad.copy() for name, p in model.named_parameters()}
        tstep()
    return grad_error(grads, tmodel)


def grad_error(grads, tmodel):
    """``max |g_cnncore - g_torch|`` over every parameter / ``max |g_torch|``; ``grads``:
    ``{name: cnncore gradient}``, the torch module's names."""
    tparams = dict(tmodel.named_parameters())
    diff = scale = 0.0
    for name, g in grads.items():
        tg = tparams[name].grad
        tg = np.zeros(g.shape) if tg is None else tg.detach().numpy().astype(np.float64)
        diff = max(diff, float(np.abs(g - tg).max()))
        scale = max(scale, float(np.abs(tg).max()))
    return diff / scale if scale else (0.0 if diff == 0 else float("inf"))


# ----------------------------------------------------------------------------- measuring
_LIBC = None


def malloc_trim():
    """Return the C heap's free memory to the system (glibc); False elsewhere."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):
        return False


class PeakRss:
    """Peak resident memory of a block above the resident size at its start (Linux: VmHWM
    reset through ``/proc/self/clear_refs``); ``mb`` is None where it cannot be reset."""

    def peak_mb_now(self):
        """The peak so far inside the block, in MB (None where it cannot be read)."""
        peak = _mem._status_kb("VmHWM") if self.ok else None
        return None if peak is None else max(0.0, peak - self.base) / 1024.0

    def __enter__(self):
        gc.collect()
        malloc_trim()
        self.base = _mem._status_kb("VmRSS")
        self.ok = self.base is not None and _mem._reset_peak()
        return self

    def __exit__(self, *exc):
        self.mb = self.peak_mb_now()
        return False


def run_case(case, torch, threads, dtype="float32", seed=0, warmup=1, repeats=3,
             budget=30.0, min_repeats=3, memory_pool=True, settle=0.25, monitor=None,
             use_ort=False, interleave=True, pause=0.0, rewarm=1, min_time=0.0):
    """Time one case (cnncore, torch unless ``torch`` is None, and for inference ONNX
    Runtime if ``use_ort``); returns the row dict. ``interleave``: timed in interleaved
    rounds of ``rewarm`` untimed and one timed call per implementation, ``pause`` seconds
    after each timed call, until each implementation's timed calls sum to ``min_time``
    seconds (see the module docstring), else one block per implementation; ``settle``:
    sleep between the implementations' blocks."""
    from ..memory import memory_pool as pool
    from .. import interop

    model = build_model(case.net, dtype, seed)
    x, labels = make_batch(case.net, case.batch, dtype, seed)
    tmodel = interop.to_torch(model) if torch is not None else None
    run_ort = None
    if use_ort and case.mode == "infer":  # built first: not in any implementation's peak
        from ..onnx.bench import ort_session
        run_ort = ort_session(model, case.net.input_shape, threads=threads)
    row = {"group": "models", "name": case.name, "network": case.net.id,
           "label": case.net.label, "input_shape": list(case.net.input_shape),
           "mode": case.mode, "batch": case.batch, "params": model.num_parameters(),
           "times": {}, "images_per_s": {}, "peak_mb": {}, "check": "no torch",
           "interleaved": bool(interleave)}
    before = monitor.snapshot() if monitor else None
    outputs, grads, rounds = {}, None, {}

    available_kb = _mem._status_kb("MemAvailable", "/proc/meminfo")

    def block(impl, fn):
        """The calls of ``impl`` in its peak-memory block after its check: its warm-up
        (interleaved: at least one, so that the block measures a call), or warm-up and
        timed calls (``--no-interleave``); returns the last call's output."""
        if not row["interleaved"]:
            row["times"][impl], out = time_budgeted(fn, warmup, repeats, budget, min_repeats)
            return out
        rounds[impl] = fn
        for _ in range(max(1, warmup)):
            out = fn()
        return out

    with contextlib.ExitStack() as stack:
        if memory_pool:  # interleaved: entered until the rounds end
            stack.enter_context(pool())
        with PeakRss() as mem:
            fn = cnncore_call(model, case.mode, x, labels)
            if case.mode == "train" and tmodel is not None:
                with _no_dropout(model, tmodel):  # the checking step, before any update
                    outputs["check_cnncore"] = np.array(fn())
                grads = {name: p.grad.copy() for name, p in model.named_parameters()}
            outputs["cnncore"] = np.array(block("cnncore", fn))
            peak_mb = mem.peak_mb_now()
            if (row["interleaved"] and tmodel is not None and peak_mb is not None
                    and available_kb is not None
                    and 2 * peak_mb > INTERLEAVE_MEMORY_SHARE * available_kb / 1024.0):
                row["interleaved"] = False  # too big to hold both: blocks, as --no-interleave
                rounds.clear()
                outputs["cnncore"] = np.array(block("cnncore", fn))
            del fn
        row["peak_mb"]["cnncore"] = mem.mb
        if not row["interleaved"]:
            stack.close()  # one block per implementation: torch runs outside the pool
        if tmodel is not None:
            torch.manual_seed(seed)
            time.sleep(settle)  # cnncore's OpenMP threads stop spinning
            with PeakRss() as mem:
                fn = torch_call(torch, tmodel, case.mode, x, labels)
                if case.mode == "train":
                    with _no_dropout(model, tmodel):
                        outputs["check_torch"] = fn().numpy()
                    row["grad_rel_error"] = grad_error(grads, tmodel)
                    del grads
                outputs["torch"] = block("torch", fn).numpy().copy()
                del fn
            row["peak_mb"]["torch"] = mem.mb
        if row["interleaved"]:
            time.sleep(settle)
            times, last = time_interleaved(rounds, repeats, budget, min_repeats, pause,
                                           rewarm, min_time=min_time)
            rounds.clear()
            row["times"].update(times)
            outputs["cnncore"] = np.array(last.pop("cnncore"))
            if "torch" in last:
                outputs["torch"] = last.pop("torch").numpy().copy()
            del last
    if run_ort is not None:
        # One block of its own, after the others, outside the pool: ONNX Runtime's workers
        # keep spinning after a run, which slowed the next cnncore call 2x when it took
        # part in the rounds (ResNet-18 CIFAR batch 1: 20 ms, 10.6 ms in blocks).
        time.sleep(settle)
        with PeakRss() as mem:
            row["times"]["onnxruntime"], out = time_budgeted(lambda: run_ort(x), warmup,
                                                             repeats, budget, min_repeats)
            outputs["onnxruntime"] = np.array(out)
            del out
        row["peak_mb"]["onnxruntime"] = mem.mb
    if tmodel is not None:
        key = "check_" if case.mode == "train" else ""
        row["rel_error"] = rel_error(outputs[key + "cnncore"], outputs[key + "torch"])
        ok = row["rel_error"] <= TOLERANCE[dtype]
        if "grad_rel_error" in row and dtype != "float64":
            row["grad_rel_error_f64"] = float64_grad_error(case, torch, seed)
            ok = ok and row["grad_rel_error_f64"] <= GRAD_TOLERANCE["float64"]
        elif "grad_rel_error" in row:
            ok = ok and row["grad_rel_error"] <= GRAD_TOLERANCE[dtype]
        row["check"] = "ok" if ok else "MISMATCH"
        row["ratio_torch"] = row["times"]["cnncore"]["median"] / row["times"]["torch"]["median"]
    if run_ort is not None:
        row["ort_rel_error"] = rel_error(outputs["cnncore"], outputs["onnxruntime"])
        row["ratio_ort"] = (row["times"]["cnncore"]["median"]
                            / row["times"]["onnxruntime"]["median"])
        if row["ort_rel_error"] > TOLERANCE[dtype]:
            row["check"] = "MISMATCH"
    for impl, t in row["times"].items():
        row["images_per_s"][impl] = case.batch / t["median"]
    row["other_cpu"] = monitor.other_share(before, monitor.snapshot()) if monitor else None
    del model, tmodel, outputs
    run_ort = None
    gc.collect()
    return row


# ----------------------------------------------------------------------------- fresh process
def _find_case(net_id, mode, batch):
    net = SMOKE_RESNET if net_id == "resnet18-cifar-w8" else _BY_ID[net_id]
    return Case(net, mode, int(batch))


def measure_here(net_id, mode, batch, impl, steps=2, threads=1, dtype="float32", seed=0,
                 memory_pool=True):
    """Peak memory of ``steps`` calls of one case and implementation, in this (fresh)
    process: the model (and for torch its twin, the cnncore model then deleted) and the
    batch are built, one warm-up call runs, then ``steps`` more; ``step_mb`` is the peak
    above the resident size after the warm-up, ``total_mb`` above the size before it."""
    case = _find_case(net_id, mode, batch)
    model = build_model(case.net, dtype, seed)
    x, labels = make_batch(case.net, case.batch, dtype, seed)
    if impl == "torch":
        import torch
        from .. import interop
        torch.set_num_threads(threads)
        tmodel = interop.to_torch(model)
        del model
        fn = torch_call(torch, tmodel, mode, x, labels)
    elif impl == "cnncore":
        import cnncore
        cnncore.set_num_threads(threads)
        if memory_pool:
            pool = cnncore.memory_pool()
            pool.__enter__()  # never left: the process ends after the measurement
            _mem._KEEP.append(pool)
        fn = cnncore_call(model, mode, x, labels)
    else:
        raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    gc.collect()
    malloc_trim()
    built = _mem._status_kb("VmRSS")
    fn()
    gc.collect()
    base = _mem._status_kb("VmRSS")
    reset = _mem._reset_peak()
    for _ in range(steps):
        fn()
    peak = _mem._status_kb("VmHWM") if reset else _mem._maxrss_kb()
    return {"case": case.name, "impl": impl, "steps": steps, "threads": threads,
            "hwm_reset": bool(reset), "rss_built_mb": built / 1024, "rss_base_mb": base / 1024,
            "peak_mb": peak / 1024, "step_mb": max(0.0, peak - base) / 1024,
            "total_mb": max(0.0, peak - built) / 1024}


def measure(case, impl, steps=2, threads=1, dtype="float32", seed=0, memory_pool=True,
            timeout=1800):
    """:func:`measure_here` in a fresh ``python -m cnncore.bench.models`` process."""
    net_id = "resnet18-cifar-w8" if case.net is SMOKE_RESNET else case.net.id
    cmd = [sys.executable, "-m", "cnncore.bench.models", net_id, case.mode, str(case.batch),
           impl, "--steps", str(steps), "--threads", str(threads), "--dtype", dtype,
           "--seed", str(seed)] + ([] if memory_pool else ["--no-memory-pool"])
    return _mem.run_json_child(cmd, f"{case.name} {impl}", timeout)


def main(argv=None):
    """``python -m cnncore.bench.models NET MODE BATCH IMPL [--steps N] [--threads N]
    [--dtype D] [--seed S] [--no-memory-pool]``: print :func:`measure_here` as JSON."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m cnncore.bench.models",
                                description="Peak memory of one whole-network case, "
                                            "measured in this (fresh) process.")
    p.add_argument("net", choices=sorted(_BY_ID) + ["resnet18-cifar-w8"])
    p.add_argument("mode", choices=("infer", "train"))
    p.add_argument("batch", type=int)
    p.add_argument("impl", choices=IMPLS)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory-pool", action="store_true")
    a = p.parse_args(argv)
    print(json.dumps(measure_here(a.net, a.mode, a.batch, a.impl, a.steps, a.threads,
                                  a.dtype, a.seed, not a.no_memory_pool)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
