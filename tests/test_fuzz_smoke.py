"""The atheris harnesses of tools/fuzz/ without atheris: every target parses its own seed
corpus and a few hundred deterministic mutations of it (bit flips, truncations, splices),
and may only succeed or raise its documented exceptions. Coverage-guided runs:
``tools/fuzz/run.sh`` (CI runs its smoke mode; the closing numbers come from its long mode)."""

import importlib
import os
import random
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "fuzz")
TARGETS = {"idx": 300, "unpickle": 300, "cifar": 300, "load": 120}


def _harness(name):
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    return importlib.import_module(f"fuzz_{name}")


def _mutations(seeds, n, rnd):
    for _ in range(n):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            op = rnd.randrange(4)
            if op == 0 and data:  # flip a bit
                i = rnd.randrange(len(data))
                data[i] ^= 1 << rnd.randrange(8)
            elif op == 1 and data:  # truncate
                del data[rnd.randrange(len(data)):]
            elif op == 2 and data:  # an "interesting" value over 1, 2, 4 or 8 bytes
                i = rnd.randrange(len(data))
                width = rnd.choice([1, 2, 4, 8])
                data[i:i + width] = rnd.choice([b"\xff", b"\x00", b"\x7f", b"\x80"]) * width
            else:  # splice in a piece of another seed
                other = rnd.choice(seeds)
                i, j = sorted(rnd.randrange(len(other) + 1) for _ in range(2))
                k = rnd.randrange(len(data) + 1)
                data[k:k] = other[i:j]
        yield bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_seeds_and_mutations(name):
    h = _harness(name)
    test_one_input = h._harness.guard(h.one_input, _expected(name, h))
    seeds = h.seeds()
    assert seeds
    try:
        for data in seeds:
            h.one_input(data)  # the seeds themselves parse
        for data in _mutations(seeds, TARGETS[name], random.Random(name)):
            test_one_input(data)
    finally:
        if os.path.exists(getattr(h, "PATH", "")):
            os.unlink(h.PATH)


def _expected(name, h):
    if name == "unpickle":
        return h._unpickle.CORRUPT_PICKLE_ERRORS
    return (ValueError,)
