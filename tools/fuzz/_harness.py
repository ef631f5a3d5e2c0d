"""Shared driver of the atheris harnesses in tools/fuzz/ (see README.md there).

Each ``fuzz_<target>.py`` defines ``seeds()`` (the seed corpus, made by the harness itself
from cnncore's own writers) and ``one_input(data)`` (parse ``data``; return normally or raise
one of the target's documented exceptions). :func:`main` wraps them for atheris:

* an exception that is not documented for the target is a finding (atheris reports it with
  the input that caused it);
* so is a ``MemoryError``: the address space is capped (``--max-gb``, 3 GB by default, far
  above what the tiny inputs need), so an input that makes the parser allocate gigabytes it
  does not hold fails loudly instead of passing unnoticed;
* native crashes (segfaults, aborts) and hangs (``-timeout``) are caught by libFuzzer.
"""

import os
import sys

# one BLAS / OpenMP thread: the parsers need none, and the fuzzer shares a busy machine
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "CNNCORE_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None


def write_seeds(directory, seeds):
    os.makedirs(directory, exist_ok=True)
    for i, data in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{i:03d}"), "wb") as f:
            f.write(data)


def _peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def guard(one_input, expected, max_rss_growth_mb=512):
    """``one_input`` with every exception outside ``expected`` (and MemoryError) re-raised,
    and an AssertionError when the peak RSS grew by more than ``max_rss_growth_mb`` over
    the first input's (inputs are kilobytes: a parser that touches hundreds of megabytes
    for one is a finding)."""
    baseline = []

    def test_one_input(data):
        try:
            one_input(data)
        except MemoryError:
            raise
        except expected:
            pass
        peak = _peak_rss_mb()
        if not baseline:
            baseline.append(peak)
        assert peak - baseline[0] <= max_rss_growth_mb, (
            f"peak RSS grew by {peak - baseline[0]:.0f} MB over the run's start")

    return test_one_input


def _functions(module):
    """The Python functions and methods defined in ``module``."""
    import types
    for obj in list(vars(module).values()):
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            yield obj
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            for attr in list(vars(obj).values()):
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                elif isinstance(attr, property):
                    attr = attr.fget
                if isinstance(attr, types.FunctionType):
                    yield attr


def instrument(modules):
    """Add atheris' coverage instrumentation to the functions of ``modules`` (names; a
    name ending in ``.*`` means the package and its submodules). Much faster to start than
    ``atheris.instrument_all()`` (which instruments numpy's ~10 000 functions)."""
    import importlib

    import atheris

    count = 0
    for name in modules:
        names = [name]
        if name.endswith(".*"):
            names = [m for m in sys.modules if m == name[:-2] or m.startswith(name[:-1])]
        for module_name in names:
            try:
                module = sys.modules.get(module_name) or importlib.import_module(module_name)
            except ImportError:  # e.g. numpy.lib._format_impl before NumPy 2
                continue
            for func in _functions(module):
                atheris.instrument_func(func)
                count += 1
    return count


def main(name, seeds, one_input, expected, modules=()):
    """Command line: ``python fuzz_<name>.py [--max-gb N] [libFuzzer options] [CORPUS...]``;
    without a corpus directory, ``tools/fuzz/corpus/<name>`` (seeded on first use)."""
    import resource

    import atheris

    args = list(sys.argv)
    max_gb = 3.0
    if "--max-gb" in args:
        i = args.index("--max-gb")
        max_gb = float(args[i + 1])
        del args[i:i + 2]
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = os.path.join(HERE, "corpus", name)
        if not os.path.isdir(corpus):
            write_seeds(corpus, seeds())
        args.append(corpus)
    limit = int(max_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    n = instrument(modules)  # coverage of the parsing code: the target's and the stdlib's
    print(f"INFO: instrumented {n} functions of {', '.join(modules)}", flush=True)
    atheris.Setup(args, guard(one_input, expected))
    atheris.Fuzz()
