"""The async micro-batcher behind every shared model engine.

Calls submit one item each and await their own result. Items from all calls
queue up; a batch is cut when it holds ``max_batch`` items or when its oldest
item has waited ``max_wait_ms``, and runs in the batcher's own worker threads
(CTranslate2 and torch release the GIL) so the event loop never blocks. The
queue is bounded: when it is full, :meth:`MicroBatcher.submit` refuses at once
with :class:`Overloaded` instead of turning overload into latency.

No pipecat imports here: engines are usable and benchmarkable on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from loguru import logger

Item = TypeVar("Item")
Result = TypeVar("Result")

RunBatch = Callable[[list[Item]], Sequence[Result | BaseException]]
"""Runs a whole batch in a worker thread and returns one result or exception per item."""


class Overloaded(RuntimeError):
    """The engine's queue is full: the request was refused without waiting."""


class BatcherClosed(RuntimeError):
    """The engine is shutting down and takes no more work."""


@dataclass(frozen=True)
class BatchRecord:
    """What one batch cost, for metrics and benchmarks.

    Attributes:
        size: items in the batch.
        max_queue_wait_secs: the longest any of them waited before the batch started.
        run_secs: wall time of the model run.
        failed: items that ended with an exception.
    """

    size: int
    max_queue_wait_secs: float
    run_secs: float
    failed: int


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[Item, Result]):
    """Collects items from many callers into batches for one model.

    Args:
        run_batch: the model call. It runs in a worker thread and returns a
            sequence as long as its input, holding each item's result or the
            exception for that item alone. If it raises instead, the batch is
            retried one item at a time so that one bad item fails only its caller.
        name: used in logs and thread names.
        max_batch: the most items in one model run.
        max_wait_ms: how long the oldest queued item may wait for companions.
        max_queue: queued (not yet running) items beyond which submits are refused.
        workers: batches that may run at once (worker threads).
        history: how many :class:`BatchRecord` entries to keep.
        share_queue: share queued items among the workers that can take them instead
            of giving one worker them all (:meth:`_takers`). For models whose batch
            costs about the sum of its items (on a CPU): every item of a batch waits
            for the last one, so four items on one worker while the other idles, or
            finishes a batch it started earlier, wait twice as long as two and two.
    """

    def __init__(
        self,
        run_batch: RunBatch[Item, Result],
        *,
        name: str,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        workers: int = 1,
        history: int = 1024,
        share_queue: bool = False,
    ):
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError(
                "max_batch, max_queue and workers must be >= 1 and max_wait_ms >= 0, got "
                f"{max_batch=}, {max_queue=}, {workers=}, {max_wait_ms=}"
            )
        self.name = name
        self.max_batch = max_batch
        self.max_wait_secs = max_wait_ms / 1000
        self.max_queue = max_queue
        self.workers = workers
        self.share_queue = share_queue
        self.records: deque[BatchRecord] = deque(maxlen=history)
        self.refused = 0
        """Submits refused with :class:`Overloaded` since the batcher was made (for metrics)."""
        self._run_batch = run_batch
        self._queue: deque[_Pending[Item, Result]] = deque()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._arrived: asyncio.Event | None = None
        self._free_workers: asyncio.Semaphore | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], float] = {}
        """Batches running now, each with the time it started."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a batch (cancelled ones are pruned when a batch is cut)."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """No batch is running and no item waits for one."""
        return not self._running and not self._queue

    async def submit(self, item: Item) -> Result:
        """Queue one item and wait for its own result.

        Cancelling the awaiting task drops the item if its batch has not started.

        Raises:
            Overloaded: the queue already holds ``max_queue`` items.
            BatcherClosed: :meth:`close` was called.
            Exception: whatever the model raised for this item.
        """
        if self._closed:
            raise BatcherClosed(f"{self.name} is shut down")
        self._prune_cancelled()
        if len(self._queue) >= self.max_queue:
            self.refused += 1
            raise Overloaded(
                f"{self.name} is overloaded: {len(self._queue)} requests already queued "
                f"(max_queue={self.max_queue})"
            )
        self._ensure_dispatcher()
        assert self._arrived is not None
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        """Refuse new work, fail queued items, let running batches finish."""
        self._closed = True
        if self._loop is not asyncio.get_running_loop():
            self._queue.clear()
            self._running = {}
        elif self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed(f"{self.name} is shut down"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _ensure_dispatcher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (asyncio.run called again): what the old one queued is gone.
            self._loop, self._dispatcher = loop, None
            self._queue.clear()
            self._running = {}
        if self._dispatcher is None or self._dispatcher.done():
            self._arrived = asyncio.Event()
            self._free_workers = asyncio.Semaphore(self.workers)
            self._dispatcher = asyncio.create_task(self._dispatch(), name=f"{self.name}-dispatch")

    def _prune_cancelled(self) -> None:
        if any(pending.future.done() for pending in self._queue):
            self._queue = deque(p for p in self._queue if not p.future.done())

    async def _dispatch(self) -> None:
        assert self._arrived is not None and self._free_workers is not None
        while True:
            await self._free_workers.acquire()
            batch = await self._next_batch()
            task = asyncio.create_task(self._run(batch), name=f"{self.name}-batch")
            self._running[task] = time.perf_counter()
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    def _takers(self) -> int:
        """The workers the queued items are for: this one, the idle ones, and the busy
        ones that started their batch before the oldest queued item arrived (they come
        back for it). A worker that started after took its share of this queue already."""
        oldest = self._queue[0].enqueued_at
        idle = self.workers - 1 - len(self._running)
        returning = sum(started < oldest for started in self._running.values())
        return 1 + max(0, idle) + returning

    async def _next_batch(self) -> list[_Pending[Item, Result]]:
        """Wait until a batch is full or its oldest item is due, then cut it."""
        assert self._arrived is not None
        while True:
            self._prune_cancelled()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            due = self._queue[0].enqueued_at + self.max_wait_secs - time.perf_counter()
            if len(self._queue) >= self.max_batch or due <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=due)
        size = min(self.max_batch, len(self._queue))
        if self.share_queue:
            size = min(size, math.ceil(len(self._queue) / self._takers()))
        return [self._queue.popleft() for _ in range(size)]

    async def _run(self, batch: list[_Pending[Item, Result]]) -> None:
        assert self._free_workers is not None
        try:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            items = [pending.item for pending in batch]
            outcomes = await loop.run_in_executor(self._executor, self._run_isolated, items)
            run_secs = time.perf_counter() - started
            failed = 0
            for pending, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed += 1
                if pending.future.done():
                    continue  # its caller gave up while the batch ran
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
            self.records.append(
                BatchRecord(
                    size=len(batch),
                    max_queue_wait_secs=started - min(p.enqueued_at for p in batch),
                    run_secs=run_secs,
                    failed=failed,
                )
            )
        except BaseException as error:  # the executor itself failed: nobody may wait forever
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        error if isinstance(error, Exception) else BatcherClosed(str(error))
                    )
            raise
        finally:
            self._free_workers.release()

    def _run_isolated(self, items: list[Item]) -> list[Result | BaseException]:
        """Run a batch; if the batch as a whole fails, run each item alone."""
        try:
            outcomes = list(self._run_batch(items))
            if len(outcomes) != len(items):
                raise RuntimeError(
                    f"{self.name} returned {len(outcomes)} results for {len(items)} items"
                )
            return outcomes
        except Exception as batch_error:
            if len(items) == 1:
                return [batch_error]
            logger.warning(
                f"{self.name}: batch of {len(items)} failed ({batch_error}); "
                "retrying items one by one"
            )
            singles: list[Result | BaseException] = []
            for item in items:
                try:
                    singles.extend(self._run_batch([item]))
                except Exception as item_error:
                    singles.append(item_error)
            return singles
