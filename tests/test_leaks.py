"""Leaks and growth (issue 12, part 5): LeNet-5 training, inside and outside
``cnncore.memory_pool``, with a last batch of another size every epoch, must not grow the
resident set after warm-up, and tracemalloc must show no growing Python objects.

The default run trains 300 steps per setting; ``pytest -m fuzz`` trains 1 000 and prints the
growth per 1 000 steps (the figure the closing note reports)."""

import gc
import os
import tracemalloc

import numpy as np
import pytest

from cnncore import lenet5, set_num_threads
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import SGD
from cnncore.trainer import Trainer

# AddressSanitizer (tools/sanitize.sh) keeps freed memory in quarantine: RSS means nothing
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
BATCH, BATCHES = 16, 10  # the last batch of every epoch has 7 images, the others 16


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _growth(steps, pool, warmup_epochs=5):
    """(RSS growth in MB, traced Python memory growth in KB) over ``steps`` steps after
    warm-up."""
    set_num_threads(2)
    rng = np.random.default_rng(0)
    n = BATCH * (BATCHES - 1) + 7
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = lenet5()
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.01,
                                                        momentum=0.9), seed=0, memory_pool=pool)
    trainer.fit(x, y, epochs=warmup_epochs, batch_size=BATCH, verbose=0)
    gc.collect()
    tracemalloc.start()
    trainer.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)  # tracemalloc's own warm-up
    gc.collect()
    rss0, snap0 = _rss_mb(), _cnncore_traces()
    trainer.fit(x, y, epochs=steps // BATCHES, batch_size=BATCH, verbose=0)
    gc.collect()
    rss1, snap1 = _rss_mb(), _cnncore_traces()
    tracemalloc.stop()
    grown = sum(d.size_diff for d in snap1.compare_to(snap0, "filename"))
    return rss1 - rss0, grown / 1024


def _cnncore_traces():
    """Memory allocated from cnncore's own code (Python objects and the NumPy arrays it
    makes), not from the test runner or hypothesis running in the same process."""
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*cnncore*"), tracemalloc.Filter(False, "*tests*")])


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux /proc needed")
@pytest.mark.parametrize("pool", [True, False], ids=["memory_pool", "numpy_allocator"])
def test_training_does_not_grow(pool):
    rss, traced = _growth(300, pool)
    if not ASAN:
        assert rss < 5, f"RSS grew by {rss:.1f} MB over 300 steps"
    assert traced < 64, f"traced Python memory grew by {traced:.0f} KB over 300 steps"


@pytest.mark.fuzz
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux /proc needed")
@pytest.mark.parametrize("pool", [True, False], ids=["memory_pool", "numpy_allocator"])
def test_training_does_not_grow_long(pool):
    rss, traced = _growth(1000, pool)
    print(f"\nLeNet-5, memory_pool={pool}: RSS {rss:+.2f} MB, traced Python memory "
          f"{traced:+.1f} KB per 1000 steps")
    assert (ASAN or rss < 5) and traced < 64
