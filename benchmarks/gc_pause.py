"""How long a full garbage collection holds the event loop, start-up's heap frozen or not.

Loads what ``voxline serve`` loads before it is ready (the Runtime's engines for the bank
persona, the server's app module), then times ``gc.collect()`` (a full, generation 2
collection, what CPython runs by itself every so often on whichever thread allocates:
in ``voxline serve`` mostly the event loop) ``--rounds`` times; then freezes the heap as
``voxline serve`` does when it is ready (``voxline/server/startup_heap.py``) and times
it again. A collection longer than the ~120 ms of audio a phone caller has in reserve
(``twilio.send_ahead_ms``) stops every call that is playing audio at that moment.

    .venv/bin/python -m benchmarks.gc_pause      # ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxline.bot.runtime import Runtime  # noqa: E402
from voxline.personas import load_persona  # noqa: E402
from voxline.server.startup_heap import freeze_startup_heap  # noqa: E402


def full_collections(rounds: int) -> list[float]:
    """Milliseconds of ``rounds`` full collections."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return times


def show(label: str, times: list[float]) -> None:
    print(
        f"{label:<24} objects tracked {len(gc.get_objects()):>7}, frozen "
        f"{gc.get_freeze_count():>7}; full collection p50 {statistics.median(times):6.1f} ms, "
        f"max {max(times):6.1f} ms (n={len(times)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    async with Runtime() as runtime:
        await runtime.prepare(persona)
        import voxline.server.app  # noqa: F401  (the server's FastAPI app and its routes)

        before = full_collections(args.rounds)
        show("start-up heap not frozen", before)
        freeze_startup_heap()
        after = full_collections(args.rounds)
        show("start-up heap frozen", after)
        gc.unfreeze()
    ratio = statistics.median(after) / statistics.median(before)
    print(
        f"gc_pause: full collection p50 {statistics.median(before):.1f} -> "
        f"{statistics.median(after):.1f} ms ({ratio:.2f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
