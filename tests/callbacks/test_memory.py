"""MemoryCleanup: when it runs, and that a run's unreachable objects are freed."""

from __future__ import annotations

import gc
import weakref

from mvcli.callbacks.memory import MemoryCleanup


def test_cleans_up_every_n_training_batches_and_after_validation():
    cleanup = MemoryCleanup(every_n_steps=3)
    for batch_idx in range(7):
        cleanup.on_train_batch_end(None, None, None, None, batch_idx)
    assert cleanup.cleanups == 2  # after batches 3 and 6
    cleanup.on_validation_end(None, None)
    assert cleanup.cleanups == 3


def test_cleanup_frees_reference_cycles():
    class Node:
        pass

    gc.disable()  # only the cleanup may collect
    try:
        node = Node()
        node.self = node  # a cycle: reference counting alone never frees it
        alive = weakref.ref(node)
        del node
        assert alive() is not None
        MemoryCleanup(every_n_steps=1).cleanup()
        assert alive() is None
    finally:
        gc.enable()
