"""Single-image convolutions on large images: cnncore against PyTorch (issue 11).

Each implementation runs in its own fresh Python process (so that its peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is its own: the imports, the arrays and the
kernels' scratch), which prints one JSON line; the parent prints a table with the ratios
cnncore / torch. Times are medians over ``--repeats`` calls after one warm-up call.

Usage::

    PYTHONPATH=src python tools/bench_big_image.py                 # the default shapes
    PYTHONPATH=src python tools/bench_big_image.py --shape 8,16,2048,5,1,2
    PYTHONPATH=src python tools/bench_big_image.py --impls cnncore,layer,torch --rounds 3

A shape is ``C_in,C_out,size,k,stride,padding`` (square image and kernel, batch 1, with
bias, float32). ``--rounds`` repeats the whole comparison (alternating the
implementations) and reports the median of the per-round medians, which is fairer on a
machine shared with other jobs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

DEFAULT_SHAPES = [
    (8, 16, 2048, 5, 1, 2),   # the case
    (3, 16, 2048, 5, 1, 2),
    (3, 16, 1024, 5, 1, 2),
    (3, 32, 2048, 3, 1, 1),
    (3, 32, 1024, 3, 1, 1),
    (3, 32, 2048, 7, 2, 3),
    (3, 32, 1024, 7, 2, 3),
    (16, 16, 1024, 3, 1, 1),
]


def _child(impl, shape, threads, repeats):
    """Run in the fresh process: time ``repeats`` forward calls after one warm-up."""
    import resource
    import time

    import numpy as np

    c_in, c_out, size, k, stride, pad = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c_in, size, size), dtype=np.float32)
    w = (rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) / (c_in * k * k) ** 0.5)
    b = rng.standard_normal(c_out, dtype=np.float32)
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        conv = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad).eval()
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        xt = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return conv(xt)
    else:
        import cnncore
        cnncore.set_num_threads(threads)
        if impl == "layer":
            from cnncore.layers import Conv2d
            conv = Conv2d(c_in, c_out, k, stride=stride, padding=pad).eval()
            conv.weight.data = w
            conv.bias.data = b
            def run():
                return conv(x)
        else:
            from cnncore.functional import conv2d
            def run():
                return conv2d(x, w, b, stride=stride, padding=pad, n_threads=threads)
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = run()
        times.append(time.perf_counter() - t0)
        del y
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB (Linux)
    algo = ""
    if impl != "torch":
        from cnncore.functional import planner
        from cnncore.functional.conv import _conv_geometry
        geo = _conv_geometry("conv2d", x.shape, w.shape, stride, pad, 1, 1)
        algo = planner.conv_algorithm(geo, c_in, c_out, k, k, n=1, kept=impl == "layer")
    print(json.dumps({"ms": 1e3 * statistics.median(times), "rss_mb": rss, "algo": algo}))


def _measure(impl, shape, threads, repeats):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--child", impl,
                          "--shape", ",".join(map(str, shape)), "--threads", str(threads),
                          "--repeats", str(repeats)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", action="append", help="C_in,C_out,size,k,stride,padding")
    ap.add_argument("--impls", default="cnncore,torch",
                    help="comma-separated: cnncore (functional), layer (Conv2d eval), torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape
              else DEFAULT_SHAPES)
    if args.child:
        _child(args.child, shapes[0], args.threads, args.repeats)
        return
    impls = args.impls.split(",")
    print(f"batch 1, float32, bias, {args.threads} threads; median of {args.repeats} calls "
          f"after 1 warm-up, median over {args.rounds} round(s); peak RSS of a fresh process")
    head = "shape (Cin->Cout, size, k, s, p)"
    cols = "".join(f"{i + ' ms':>12}{i + ' MB':>11}" for i in impls)
    print(f"{head:34}{cols}  ratios vs torch (time, RSS)   algo")
    for shape in shapes:
        res = {i: [] for i in impls}
        for _ in range(args.rounds):
            for impl in impls:
                res[impl].append(_measure(impl, shape, args.threads, args.repeats))
        med = {i: (statistics.median(r["ms"] for r in res[i]),
                   statistics.median(r["rss_mb"] for r in res[i])) for i in impls}
        c_in, c_out, size, k, s, p = shape
        line = f"{c_in:>3}->{c_out:<3} {size:>5}^2 {k}x{k} s{s} p{p}".ljust(34)
        line += "".join(f"{med[i][0]:12.1f}{med[i][1]:11.0f}" for i in impls)
        if "torch" in impls:
            line += "  " + " ".join(f"{i}: {med[i][0] / med['torch'][0]:.2f}x "
                                    f"{med[i][1] / med['torch'][1]:.2f}x"
                                    for i in impls if i != "torch")
        algos = {r["algo"] for i in impls if i != "torch" for r in res[i]}
        line += "   " + "/".join(sorted(algos))
        print(line, flush=True)


if __name__ == "__main__":
    main()
