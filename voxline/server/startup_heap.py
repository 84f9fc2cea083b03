"""Start-up's objects kept out of the garbage collector's full collections.

A voice server allocates most of its Python objects once, at start-up: the modules of
pipecat, FastAPI, torch and ONNX Runtime, the engines' wrappers (about a quarter of a
million objects in ``voxline serve`` with the bank persona). CPython's full
(generation 2) collection looks at every one of them, and it runs on whichever thread
allocates when it is due: in ``voxline serve`` mostly the event loop that paces every
call's audio. During a burst of eight calls such a collection held the loop for 163 ms,
and one after the burst for 210 ms: longer than the 120 ms of audio each caller has in
reserve (``twilio.send_ahead_ms``), so every call playing audio at that moment stops at
once. :func:`freeze_startup_heap` collects once when the server is ready and moves what
survives into the permanent generation (:func:`gc.freeze`), so the collections after it
only look at what calls allocate: ``benchmarks/gc_pause.py`` times both.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, then freeze the objects left; returns how many are frozen.

    Frozen objects are never collected as garbage; one that loses its last reference is
    still freed at once (reference counting), only a cycle among them would stay.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
