"""Conv -> ReLU -> max-pool forward and backward through the compiled kernels, checked
against the NumPy reference, with the time each took.

Run: ``python -m cnncore.examples.conv_relu_pool [--batch 64] [--threads N]``
"""

import argparse
import time

import numpy as np

from cnncore import functional as F
from cnncore import reference as R


def forward_backward(ops, x, w, b):
    """conv 3x3 pad 1 -> relu -> max-pool 2x2; backward of sum(y * g) for a fixed g."""
    z = ops.conv2d(x, w, b, padding=1)
    a = ops.relu(z)
    y = ops.max_pool2d(a, 2)
    g = np.cos(np.arange(y.size, dtype=x.dtype)).reshape(y.shape)
    ga = ops.max_pool2d_backward(g, a, 2)
    gz = ops.relu_backward(ga, z)
    gx, gw, gb = ops.conv2d_backward(gz, x, w, padding=1)
    return y, gx, gw, gb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import cnncore
        cnncore.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 32, 32, 32), dtype=np.float32)
    w = rng.standard_normal((64, 32, 3, 3), dtype=np.float32) * 0.1
    b = rng.standard_normal(64, dtype=np.float32)
    results = {}
    for name, ops in (("cnncore", F), ("reference", R)):
        forward_backward(ops, x, w, b)  # warm-up
        t0 = time.perf_counter()
        results[name] = forward_backward(ops, x, w, b)
        results[name + "_s"] = time.perf_counter() - t0
    for label, got, want in zip(("y", "grad_x", "grad_weight", "grad_bias"),
                                results["cnncore"], results["reference"]):
        rel = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        print(f"{label:12s} shape {str(got.shape):18s} max rel. difference {rel:.2e}")
        if rel > 1e-4:
            raise SystemExit(f"{label} differs from the reference by {rel:.2e}")
    print(f"cnncore {results['cnncore_s'] * 1e3:.1f} ms, reference "
          f"{results['reference_s'] * 1e3:.1f} ms: "
          f"{results['reference_s'] / results['cnncore_s']:.1f}x faster")
    print("check against reference: OK")


if __name__ == "__main__":
    main()
