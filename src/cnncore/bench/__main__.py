"""``python -m cnncore.bench``: time cnncore's kernels against its NumPy reference and
PyTorch (when installed), side by side in one process. ``--help`` lists the options."""

import argparse
import json
import math
import os
import sys
import textwrap

import numpy as np

from .runner import Settings, run
from .shapes import CONV_SHAPES, LENET_BATCHES, POOL_SHAPES, scaled, select

from . import models as _models

#: Every op; ``models`` (whole zoo networks) is slow and runs only when asked for.
OPS = ("conv", "pool", "lenet", "memory", "models")
DEFAULT_OPS = ("conv", "pool", "lenet", "memory")


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build_parser():
    """The argparse parser of the command line."""
    names = ", ".join(s.name for s in CONV_SHAPES + POOL_SHAPES)
    p = argparse.ArgumentParser(
        prog="python -m cnncore.bench",
        description=textwrap.fill(
            "Profile cnncore's convolution and pooling kernels (forward and backward "
            "separately) and a LeNet-5 training step against the NumPy reference "
            "(cnncore.reference) and PyTorch CPU when it is installed, at the same "
            "thread count, and relate the speed to this machine's peak; measure the "
            "peak memory of the LeNet-5 step (ops 'memory': one fresh process per "
            "implementation and batch). '--ops models' (not in the default set: it "
            "takes long) times whole zoo networks, inference and a training step, "
            "against their cnncore.interop.to_torch twins.", 79),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="ratios:\n  /torch = cnncore time / torch time (< 1 means cnncore is faster)\n"
               "  xnumpy = reference time / cnncore time (the speed-up over NumPy)\n"
               "Speed depends on the machine and its load: run on an idle machine.\n"
               "shapes (--shapes):\n" + textwrap.fill(names, 88, initial_indent="  ",
                                                       subsequent_indent="  ",
                                                       break_on_hyphens=False))
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every implementation (cnncore n_threads, "
                        "torch.set_num_threads, NumPy BLAS via threadpoolctl); "
                        f"default: all usable cores ({_cpu_count()})")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS),
                   help=f"comma-separated subset of {','.join(OPS)} (default %(default)s; "
                        "'models', whole networks, is slow: --quick keeps it to about two "
                        "minutes)")
    p.add_argument("--models", default="", metavar="NAMES",
                   help="with --ops models: comma-separated networks to run (ids, or a model "
                        "name for all its variants: 'resnet18' = resnet18 and resnet18-cifar); "
                        "default: all (--quick: lenet5, resnet18-cifar, resnet18 batch 1, "
                        "vgg11-cifar). Ids: " + ", ".join(n.id for n in _models.NETWORKS))
    p.add_argument("--models-memory", action="store_true",
                   help="with --ops models: also measure each case's peak memory in a fresh "
                        "process per implementation (slower; the table then shows it)")
    p.add_argument("--no-interleave", action="store_true",
                   help="with --ops models: time cnncore and torch each in one block of "
                        "warm-up + repeats calls instead of interleaved rounds (default: "
                        "after each one's warm-up, rounds in which each runs one untimed and "
                        "one timed call in turn, so that both see the same machine speed; "
                        "ONNX Runtime is timed in a block of its own either way)")
    p.add_argument("--shapes", default="",
                   help="comma-separated shape names to keep (default: all)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement (default 10; --quick 3, --smoke 1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up calls before the repeats (default 2; --quick 1, "
                        "--smoke 0)")
    p.add_argument("--ref-repeats", type=int, default=None,
                   help="repeats of the slow NumPy reference (default max(3, repeats // 3); "
                        "--quick/--smoke 1)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="element type (default %(default)s); the peak follows it")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    p.add_argument("--no-ort", action="store_true",
                   help="with --ops models: no ONNX Runtime column (default: on when onnx "
                        "and onnxruntime are installed)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not time the NumPy reference (it is slow on the big shapes)")
    p.add_argument("--no-memory-pool", action="store_true",
                   help="run the NumPy-based LeNet-5 steps with NumPy's own allocator "
                        "instead of inside cnncore.memory_pool() (as Trainer.fit runs)")
    p.add_argument("--torch-backward", choices=("aten", "autograd"), default="aten",
                   help="how PyTorch's backward is timed: 'aten' calls the ATen backward "
                        "operators directly (default, the kernel-to-kernel comparison); "
                        "'autograd' times torch.autograd.grad on a retained forward graph")
    sc = p.add_mutually_exclusive_group()
    sc.add_argument("--scaling", dest="scaling", action="store_true", default=None,
                    help="also time cnncore conv fwd+bwd at 1 thread (default: on when "
                         "--threads > 1 and not --quick/--smoke)")
    sc.add_argument("--no-scaling", dest="scaling", action="store_false",
                    help="skip the 1-thread scaling measurement")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="about 30 s: batches of the conv/pool shapes divided by 4, "
                           "3 repeats, 1 reference repeat, a 2048^2 gemm peak, 2 steps "
                           "per memory measurement")
    mode.add_argument("--smoke", action="store_true",
                      help="a few seconds, for tests: batches divided by 32, 1 repeat, "
                           "no warm-up, LeNet batch 8 only, 1 step per memory measurement")
    p.add_argument("--json", metavar="PATH",
                   help="write everything (machine, config, every row with all repeats) "
                        "to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the input data")
    return p


def settings_from_args(args, parser=None):
    """:class:`~cnncore.bench.runner.Settings` from parsed arguments."""
    def fail(msg):
        if parser is not None:
            parser.error(msg)
        raise ValueError(msg)

    threads = args.threads if args.threads is not None else _cpu_count()
    if threads < 1:
        fail(f"--threads must be >= 1, got {threads}")
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        fail(f"--ops: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(OPS)}")
    model_names = tuple(n.strip() for n in args.models.split(",") if n.strip())
    try:
        _models.select_networks(model_names)
    except ValueError as exc:
        fail(str(exc))
    if (model_names or args.models_memory or args.no_interleave) and "models" not in ops:
        fail("--models, --models-memory and --no-interleave need --ops models")
    names = {n.strip() for n in args.shapes.split(",") if n.strip()}
    unknown = names - {s.name for s in CONV_SHAPES + POOL_SHAPES}
    if unknown:
        fail(f"--shapes: unknown {', '.join(sorted(unknown))}")

    conv, pool, batches = CONV_SHAPES, POOL_SHAPES, LENET_BATCHES
    if args.smoke:
        mode, repeats, warmup, ref_repeats, gemm_n, div = "smoke", 1, 0, 1, 512, 32
        batches, memory_steps = (8,), 1
        note = ("SMOKE mode (for tests, numbers are not meaningful): conv/pool batches "
                "divided by 32, 1 repeat, no warm-up, LeNet batch 8 only, 512^2 gemm, "
                "1 memory step; models: LeNet-5 and a width-8 ResNet-18 CIFAR, tiny batches")
    elif args.quick:
        mode, repeats, warmup, ref_repeats, gemm_n, div = "quick", 3, 1, 1, 2048, 4
        memory_steps = 2
        note = ("QUICK mode: conv/pool batches divided by 4 (so the shapes differ from "
                "the standard set), 3 repeats, 1 reference repeat, 2048^2 gemm peak, "
                "2 memory steps; models: LeNet-5, ResNet-18 CIFAR, ResNet-18 batch 1, "
                "VGG-11 CIFAR (with --models: training batch 8 for ImageNet sizes)")
    else:
        mode, repeats, warmup, ref_repeats, gemm_n, div = "full", 10, 2, None, 4096, 1
        memory_steps = 5
        note = ""
    if div > 1:
        conv, pool = scaled(conv, div), scaled(pool, div)
    repeats = args.repeats if args.repeats is not None else repeats
    warmup = args.warmup if args.warmup is not None else warmup
    if repeats < 1 or warmup < 0:
        fail("--repeats must be >= 1 and --warmup >= 0")
    if args.ref_repeats is not None:
        ref_repeats = args.ref_repeats
    elif ref_repeats is None:
        ref_repeats = max(3, repeats // 3)
    if ref_repeats < 1:
        fail("--ref-repeats must be >= 1")
    scaling = args.scaling
    if scaling is None:
        scaling = threads > 1 and mode == "full"
    return Settings(
        threads=threads, repeats=repeats, warmup=warmup, ref_repeats=ref_repeats,
        ref_warmup=min(warmup, 1), dtype=args.dtype, ops=ops,
        conv_shapes=select(conv, names & {s.name for s in CONV_SHAPES}) if names else conv,
        pool_shapes=select(pool, names & {s.name for s in POOL_SHAPES}) if names else pool,
        lenet_batches=batches, memory_steps=memory_steps, use_torch=not args.no_torch,
        use_reference=not args.no_reference, torch_backward=args.torch_backward,
        scaling=bool(scaling), scaling_repeats=max(1, min(3, repeats)), gemm_n=gemm_n,
        mode=mode, mode_note=note, seed=args.seed, settle=0.0 if mode == "smoke" else 0.25,
        memory_pool=not args.no_memory_pool, models=model_names,
        models_memory=args.models_memory, use_ort=not args.no_ort,
        models_budget={"smoke": 0.0, "quick": 10.0, "full": 60.0}[mode],
        models_min_repeats=1 if mode == "smoke" else 3,
        models_interleave=not args.no_interleave,
        models_pause=0.0, models_rewarm=0 if mode == "smoke" else 1,
        models_min_time=0.0 if mode == "smoke" else 0.5)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN / Infinity
    return obj


def main(argv=None):
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(args, parser)
    if args.shapes and not (settings.conv_shapes or settings.pool_shapes) \
            and not {"lenet", "memory", "models"} & set(settings.ops):
        parser.error("--shapes and --ops leave nothing to run")
    results = run(settings, emit=lambda line: print(line, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_jsonable(results), f, indent=1, allow_nan=False, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
