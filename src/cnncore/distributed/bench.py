"""Data-parallel training throughput on MPI: images/s at 1 and more ranks, the share of
the step spent summing gradients, and the effect of overlapping that sum with backward.

One measurement (under mpiexec; prints one JSON line from rank 0)::

    mpiexec -n 2 python -m cnncore.distributed.bench --model resnet18 --threads 1

All of them, launched side by side (1 rank, 2 ranks, with and without overlap, repeated
and interleaved so that the load of a shared machine hits every configuration alike)::

    python -m cnncore.distributed.bench --launch --ranks 1 2 --models lenet5 resnet18

Weak scaling, as Horovod reports it: every rank computes ``--batch-per-rank`` images per
step, the global batch is ``ranks x batch-per-rank``, and images/s is the global batch over
the median step time (after ``--warmup`` steps). The steps run through
``Trainer.fit(distributed=...)``, so the figures include everything a training step does;
``comm`` is the time spent in the gradient and metric sums (what remains of it when the
sums overlap backward), waiting for the slowest rank included; ``sum alone`` times the
gradient sum by itself after a barrier (the transfer and addition cost), next to MPI's own
(non rank-ordered) ``Allreduce`` of the same bytes.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _model(name, width, dtype=np.float32):
    from .. import zoo
    if name == "lenet5":
        return zoo.lenet5(), (1, 28, 28)
    if name == "resnet18":
        return zoo.resnet(18, variant="cifar", width=width, dtype=dtype), (3, 32, 32)
    if name == "resnet50":
        return zoo.resnet(50, variant="cifar", width=width, dtype=dtype), (3, 32, 32)
    raise SystemExit(f"unknown model {name!r}")


def measure(args):
    from .._config import set_num_threads
    from ..callbacks import Callback
    from ..losses import SoftmaxCrossEntropy
    from ..optim import SGD
    from ..trainer import Trainer
    from . import DistributedContext

    set_num_threads(args.threads)
    ctx = DistributedContext("mpi", bucket_bytes=args.bucket_mb << 20, overlap=args.overlap)
    model, shape = _model(args.model, args.width)
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.01,
                                                        momentum=0.9), distributed=ctx)
    global_batch = args.batch_per_rank * ctx.size
    rng = np.random.default_rng(0)
    n = global_batch * (args.warmup + args.steps)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    y = rng.integers(0, 10, n)

    comm_time, comm_cpu = [], []
    reduce_step = ctx.reduce_step

    def timed_reduce(*a):
        t, c = time.perf_counter(), time.process_time()
        out = reduce_step(*a)
        comm_time.append(time.perf_counter() - t)
        comm_cpu.append(time.process_time() - c)
        return out
    ctx.reduce_step = timed_reduce

    class Steps(Callback):
        def __init__(self):
            self.times, self.cpu = [], []

        def on_batch_begin(self, trainer, batch):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_batch_end(self, trainer, batch, logs):
            self.times.append(time.perf_counter() - self.t)
            self.cpu.append(time.process_time() - self.c)

    steps = Steps()
    trainer.fit(x, y, epochs=1, batch_size=global_batch, shuffle=False, verbose=0,
                callbacks=[steps])
    # the sum alone, both ranks arriving together: ours (rank order) and MPI's Allreduce
    flat = np.ones(sum(f.size for _, f in ctx.reducer.buckets), np.float32)
    ours, mpis = [], []
    for _ in range(max(3, args.steps)):
        ctx.comm.barrier()
        t = time.perf_counter()
        ctx.reducer.reduce()
        ours.append(time.perf_counter() - t)
        ctx.comm.barrier()
        t = time.perf_counter()
        if ctx.size > 1:
            ctx.comm.comm.Allreduce(ctx.comm.MPI.IN_PLACE, flat)
        mpis.append(time.perf_counter() - t)
    step = np.array(steps.times[args.warmup:])
    # CPU seconds of this rank's computation (the step minus the sums, in which MPICH
    # busy-waits): on a loaded machine, wall time measures the load, this measures the work
    compute_cpu = np.array(steps.cpu[args.warmup:]) - np.array(comm_cpu[args.warmup:])
    comm = np.array(comm_time[args.warmup:])
    # every rank waits for the slowest in the sums: report rank 0's view
    result = {"model": args.model, "width": args.width, "ranks": ctx.size,
              "threads": args.threads, "overlap": args.overlap,
              "batch_per_rank": args.batch_per_rank,
              "params": model.num_parameters(),
              "grad_mbytes": round(ctx.reducer.nbytes / 2**20, 2),
              "buckets": len(ctx.reducer.buckets),
              "step_s": float(np.median(step)), "comm_s": float(np.median(comm)),
              "images_per_s": global_batch / float(np.median(step)),
              "comm_share": float(np.median(comm / step)),
              "compute_cpu_s_per_image": float(np.median(compute_cpu)) / args.batch_per_rank,
              "sum_alone_s": float(np.median(ours)), "mpi_allreduce_s": float(np.median(mpis))}
    if ctx.rank == 0:
        print(json.dumps(result), flush=True)
    return result


def launch(args):
    """Run every configuration under mpiexec, interleaved, and print a table."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    configs = [(m, r, o) for m in args.models for r in args.ranks
               for o in ((False, True) if (args.compare_overlap and r > 1) else (args.overlap,))]
    results = {c: [] for c in configs}
    for rep in range(args.repeat):
        for model, ranks, overlap in configs:
            cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "cnncore.distributed.bench",
                   "--model", model, "--width", str(args.width), "--threads", str(args.threads),
                   "--batch-per-rank", str(args.batch_per_rank), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--bucket-mb", str(args.bucket_mb)]
            if overlap:
                cmd.append("--overlap")
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                                 env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if out.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[(model, ranks, overlap)].append(res)
            print(f"# run {rep + 1}: {model} ranks={ranks} overlap={overlap}: "
                  f"{res['images_per_s']:.1f} img/s, comm {100 * res['comm_share']:.1f} %",
                  file=sys.stderr, flush=True)
    print(f"| model | params | ranks | overlap | step (s) | images/s | vs 1 rank | "
          f"comm (s) | comm share | sum alone (s) | MPI Allreduce (s) | compute CPU ms/image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, ranks, overlap in configs:
        rs = results[(model, ranks, overlap)]
        ips = float(np.median([r["images_per_s"] for r in rs]))
        base = results.get((model, 1, args.overlap)) or results.get((model, 1, False))
        speedup = ips / float(np.median([r["images_per_s"] for r in base])) if base else None
        print(f"| {model} | {rs[0]['params']:,} | {ranks} | {'yes' if overlap else 'no'} | "
              f"{np.median([r['step_s'] for r in rs]):.3f} | {ips:.1f} | "
              f"{'' if speedup is None else f'{speedup:.2f}x'} | "
              f"{np.median([r['comm_s'] for r in rs]):.4f} | "
              f"{100 * np.median([r['comm_share'] for r in rs]):.1f} % | "
              f"{np.median([r['sum_alone_s'] for r in rs]):.4f} | "
              f"{np.median([r['mpi_allreduce_s'] for r in rs]):.4f} | "
              f"{1e3 * np.median([r.get('compute_cpu_s_per_image', np.nan) for r in rs]):.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cnncore.distributed.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="lenet5, resnet18 or resnet50 (CIFAR)")
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet18"], help="with --launch")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2], help="with --launch")
    p.add_argument("--width", type=int, default=64, help="ResNet width (64: the real one)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads per rank")
    p.add_argument("--batch-per-rank", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bucket-mb", type=int, default=8)
    p.add_argument("--overlap", action="store_true", help="start bucket sums during backward")
    p.add_argument("--launch", action="store_true", help="run all configurations (mpiexec)")
    p.add_argument("--compare-overlap", action="store_true",
                   help="with --launch: multi-rank runs with and without overlap")
    p.add_argument("--repeat", type=int, default=2, help="with --launch: interleaved repeats")
    args = p.parse_args(argv)
    if args.launch:
        launch(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
