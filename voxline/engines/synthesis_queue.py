"""The queue in front of a shared TTS voice: first chunks first, then the audio needed soonest.

Synthesis jobs of every call wait in one priority queue and run on the queue's own
worker threads, never on the event loop:

1. a reply's **first chunk** (priority :data:`FIRST`) goes before anything else, so a
   caller's first audio never waits behind another call's long sentence queued
   earlier;
2. then the other pieces (:data:`LATER`), the one whose caller runs out of audio
   soonest first (its ``needed at`` time), and pieces that gave no time in the order
   their requests arrived.

With two workers or more, one is kept for first chunks; with ``urgent_secs`` set, a
later piece whose caller runs out of audio within that time, and has not yet, may take
it too. With ``urgent_before_first`` as well, such a piece (or one whose caller has
already run out) goes before waiting first chunks: a caller who is listening would hear
a gap, one who waits for a reply to begin hears it a moment later. A running job is
never preempted. The queue is bounded: a new request finding
``max_queue`` jobs waiting is refused at once with
:class:`~voxline.engines.batcher.Overloaded`.

No pipecat imports here: engines are usable and benchmarkable on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voxline.engines.batcher import BatcherClosed, Overloaded

FIRST = 0
LATER = 1

JobKey = tuple[int, float, int, int]
"""Priority (:data:`FIRST` or :data:`LATER`), needed at (``time.monotonic()``, ``inf``
for no time), the request's arrival number, the piece's index in its request."""


@dataclass(order=True)
class _Job:
    key: JobKey
    run: Callable[[], Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)

    @property
    def cancelled(self) -> bool:
        """Its caller cancelled it. Read from the worker threads: a future's state is one
        attribute, and reading it here drops the job as soon as it is cancelled rather
        than once the event loop has run the future's callbacks (a busy loop runs them
        late, and a worker would synthesize a sentence nobody will hear)."""
        return self.future.cancelled()


class SynthesisQueue:
    """Worker threads serving synthesis jobs by priority, then by when they are needed.

    Args:
        name: names the worker threads and the errors.
        workers: jobs run at once.
        max_queue: jobs waiting beyond which a new request is refused (a request
            already speaking may queue its next piece until twice that).
        prioritize_first: serve first chunks before other pieces; ``False`` is plain
            first-in, first-out.
        reserve_first: with two workers or more, keep one of them for first chunks: other
            pieces run on at most ``workers - 1`` workers at once, so a first chunk never
            waits for a long sentence to end.
        urgent_secs: a later piece whose caller runs out of audio within this many
            seconds, and has not yet, may run on the worker kept for first chunks;
            ``None``: never.
        urgent_before_first: a later piece whose caller runs out of audio within
            ``urgent_secs``, or has already, goes before the first chunks waiting.
    """

    def __init__(
        self,
        *,
        name: str,
        workers: int,
        max_queue: int,
        prioritize_first: bool = True,
        reserve_first: bool = True,
        urgent_secs: float | None = None,
        urgent_before_first: bool = False,
    ):
        self.name = name
        self.urgent_before_first = urgent_before_first
        self.prioritize_first = prioritize_first
        self.max_queue = max_queue
        self.urgent_secs = urgent_secs
        self.refused = 0
        """Requests refused because the queue was full (overload), for metrics."""
        self._fifo = itertools.count()
        self._heap: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0
        self._later_running = 0
        reserve = reserve_first and prioritize_first and workers > 1
        self._later_slots = workers - 1 if reserve else workers
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        with self._cond:
            return sum(1 for job in self._heap if not job.cancelled)

    @property
    def busy(self) -> int:
        """Workers running a job now."""
        return self._busy

    def submit(
        self, key: JobKey, run: Callable[[], Any], *, admission: bool
    ) -> asyncio.Future[Any]:
        """Queue ``run`` to be called in a worker; its result or error settles the future.

        ``admission``: the job starts a new request, refused at ``max_queue`` waiting
        jobs; the later pieces of a request already speaking may queue up to twice that.
        Cancelling the future drops the job if it has not started.

        Raises:
            Overloaded: the queue is full.
            BatcherClosed: the queue was closed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.prioritize_first:
            key = (LATER, math.inf, next(self._fifo), key[3])
        job = _Job(key, run, loop, future)
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name} is shut down")
            if any(waiting.cancelled for waiting in self._heap):
                self._heap = [waiting for waiting in self._heap if not waiting.cancelled]
                heapq.heapify(self._heap)
            limit = self.max_queue if admission else 2 * self.max_queue
            if len(self._heap) >= limit:
                self.refused += 1
                raise Overloaded(
                    f"{self.name} is overloaded: {len(self._heap)} syntheses already queued "
                    f"(max_queue={self.max_queue})"
                )
            heapq.heappush(self._heap, job)
            self._cond.notify()

        return future

    def close(self) -> None:
        """Refuse new jobs, fail waiting ones, let running ones finish, stop the workers."""
        with self._cond:
            self._closed = True
            waiting, self._heap = self._heap, []
            self._cond.notify_all()
        for job in waiting:
            _settle(job, None, BatcherClosed(f"{self.name} is shut down"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and isinstance(picked := self._pick(), float | None):
                    self._cond.wait(picked)  # None: until notified
                if self._closed:
                    return
                job = picked
                later = job.key[0] != FIRST
                self._busy += 1
                self._later_running += later
            try:
                result, error = job.run(), None
            except Exception as exc:  # delivered to the caller that asked
                result, error = None, exc
            finally:
                with self._cond:
                    self._busy -= 1
                    self._later_running -= later
                    self._cond.notify_all()
            _settle(job, result, error)

    def _pick(self) -> _Job | float | None:
        """The job a free worker runs now, taken off the queue; else how long to wait
        before asking again (a later piece becoming urgent), or None until notified.
        Call with the lock held."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        first_waits = self._heap[0].key[0] == FIRST
        if (
            first_waits
            and self.urgent_before_first
            and isinstance(urgent := self._take_urgent(late_too=True), _Job)
        ):
            return urgent  # in place of the first chunk: no more workers run
        if first_waits or self._later_running < self._later_slots:
            return heapq.heappop(self._heap)
        # The worker kept for first chunks: lent to the piece needed soonest that is not
        # late yet. One already late is heard as a stall whatever runs now; lent then,
        # the worker only adds a thread to a CPU that is behind (eight calls on two
        # cores had more stalls, docs/benchmarks.md).
        return self._take_urgent(late_too=False)

    def _take_urgent(self, *, late_too: bool) -> _Job | float | None:
        """The later piece needed soonest, taken off the queue if its caller runs out of
        audio within ``urgent_secs``; else how long until it does, or None (no such
        piece). ``late_too``: a piece whose caller has already run out counts.
        Call with the lock held."""
        if self.urgent_secs is None:
            return None
        now = time.monotonic()
        pending = [
            job
            for job in self._heap
            if job.key[0] == LATER
            and not job.cancelled
            and job.key[1] < math.inf
            and (late_too or now < job.key[1])
        ]
        if not pending:
            return None
        job = min(pending)
        wait = job.key[1] - now - self.urgent_secs
        if wait > 0:
            return wait
        self._heap.remove(job)
        heapq.heapify(self._heap)
        return job


def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
    """Hand a worker's outcome to the awaiting coroutine on its own event loop."""

    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits any more
        job.loop.call_soon_threadsafe(settle)
