"""``python -m cnncore.bench``: the profiler of cnncore's kernels.

Times :mod:`cnncore.functional` against :mod:`cnncore.reference` (NumPy) and, when it
can be imported, PyTorch CPU, in one process at one thread count: every convolution and
pooling shape of the standard set forward and backward, and a LeNet-5 training step.
Reports medians, ratios, GFLOP/s (GB/s for pools) and the share of this machine's peak,
and the peak memory of the LeNet-5 step (one fresh process per implementation).
``--ops models`` (only when asked) times whole zoo networks, inference and a training
step, against their :func:`cnncore.interop.to_torch` twins.

Modules: :mod:`.shapes` (problems and FLOP/byte counts), :mod:`.timing`, :mod:`.peak`
(cpuinfo parser, gemm and theoretical peaks), :mod:`.backends` (the timed callables),
:mod:`.lenet`, :mod:`.memory`, :mod:`.models` (whole networks), :mod:`.report` (text
output), :mod:`.runner`; ``__main__``
is the CLI.
PyTorch is imported lazily and only if installed: it is never a dependency.
"""

__all__ = ["main"]


def main(argv=None):
    """Run the command line ``python -m cnncore.bench`` with ``argv``; returns the exit code."""
    from .__main__ import main as _main
    return _main(argv)
