"""Start-up's objects are frozen out of the garbage collector's full collections.

A full collection of the objects ``voxline serve`` holds after start-up took 160-210 ms
on the event loop that paces every call's audio; frozen, later collections look only at
what the calls allocate (voxline/server/startup_heap.py).
"""

from __future__ import annotations

import gc
import weakref

from voxline.server.startup_heap import freeze_startup_heap


class Node:
    """An object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_what_start_up_keeps_is_frozen_and_its_garbage_collected_first():
    kept = [Node() for _ in range(10_000)]  # the models and modules start-up loads
    garbage = Node()
    garbage.other = Node()
    garbage.other.other = garbage  # a cycle start-up left behind
    gone = weakref.ref(garbage)
    del garbage
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(kept) and gc.get_freeze_count() == frozen
        assert gone() is None  # collected before the freeze, not kept for ever
        # A full collection no longer looks at what was frozen...
        full = {id(obj) for obj in gc.get_objects(generation=2)}
        assert not any(id(node) in full for node in kept)
        # ...and still collects the cycles the calls make after it.
        late = Node()
        late.other = late
        late_ref = weakref.ref(late)
        del late
        gc.collect()
        assert late_ref() is None
    finally:
        gc.unfreeze()
