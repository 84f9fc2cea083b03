"""The TTS synthesis queue on its own: first chunks first, then by need, bounded, closable."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.engines.synthesis_queue import FIRST, LATER, SynthesisQueue


class Jobs:
    """Jobs that record the order they ran in; the gate holds every worker until opened."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.began: list[str] = []
        self.gate = threading.Event()
        self.running = threading.Semaphore(0)

    def job(self, name: str):
        def run() -> str:
            self.began.append(name)
            self.running.release()
            self.gate.wait(10)
            self.ran.append(name)
            return name

        return run

    async def started(self, count: int = 1) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.running.acquire, True, 5)


async def busy_queue(**settings) -> tuple[Jobs, SynthesisQueue, asyncio.Future]:
    """A one-worker queue whose worker runs a held job: what comes next has to wait."""
    jobs = Jobs()
    queue = SynthesisQueue(name="tts", workers=1, **{"max_queue": 8, **settings})
    held = queue.submit((LATER, 0.0, 0, 0), jobs.job("held"), admission=True)
    await jobs.started()
    return jobs, queue, held


async def test_a_first_chunk_runs_on_the_kept_worker_while_later_pieces_wait():
    jobs = Jobs()
    queue = SynthesisQueue(name="tts", workers=2, max_queue=8)
    later = [
        queue.submit((LATER, math.inf, request, 0), jobs.job(f"later{request}"), admission=True)
        for request in range(3)
    ]
    await jobs.started()  # one worker takes a later piece; the other is kept
    first = queue.submit((FIRST, 0.0, 9, 0), jobs.job("first"), admission=True)
    await jobs.started()  # the kept worker takes the first chunk at once
    assert queue.busy == 2 and queue.queued == 2
    jobs.gate.set()
    assert await asyncio.wait_for(first, 5) == "first"
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == ["later0", "later1", "later2"]
    queue.close()


async def test_later_pieces_run_in_the_order_their_callers_need_them():
    jobs, queue, blocker = await busy_queue()
    now = time.monotonic()
    futures = [
        queue.submit((LATER, math.inf, 1, 0), jobs.job("no time"), admission=True),
        queue.submit((LATER, now + 2.0, 2, 0), jobs.job("in 2 s"), admission=True),
        queue.submit((LATER, now + 0.5, 3, 0), jobs.job("in 0.5 s"), admission=True),
        queue.submit((FIRST, 0.0, 4, 0), jobs.job("first"), admission=True),
    ]
    jobs.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *futures), 5)
    assert jobs.ran == ["held", "first", "in 0.5 s", "in 2 s", "no time"]
    queue.close()


@pytest.mark.parametrize("before_first", [True, False])
async def test_a_piece_about_to_be_missed_may_go_before_first_chunks(before_first):
    """With ``urgent_before_first``, pieces whose callers run out of audio within
    ``urgent_secs`` (or have already) go before a waiting first chunk, the soonest first;
    one needed later does not. Without it, first chunks go first."""
    jobs, queue, blocker = await busy_queue(urgent_secs=0.5, urgent_before_first=before_first)
    now = time.monotonic()
    futures = [
        queue.submit((FIRST, 0.0, 1, 0), jobs.job("first"), admission=True),
        queue.submit((LATER, now + 3.0, 2, 0), jobs.job("in 3 s"), admission=True),
        queue.submit((LATER, now + 0.3, 3, 0), jobs.job("in 0.3 s"), admission=True),
        queue.submit((LATER, now - 0.2, 4, 0), jobs.job("0.2 s late"), admission=True),
    ]
    jobs.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *futures), 5)
    if before_first:
        assert jobs.ran == ["held", "0.2 s late", "in 0.3 s", "first", "in 3 s"]
    else:
        assert jobs.ran == ["held", "first", "0.2 s late", "in 0.3 s", "in 3 s"]
    queue.close()


async def test_without_priorities_jobs_run_first_in_first_out():
    jobs, queue, blocker = await busy_queue(prioritize_first=False)
    futures = [
        queue.submit((LATER, 5.0, 1, 0), jobs.job("a"), admission=True),
        queue.submit((FIRST, 0.0, 2, 0), jobs.job("b"), admission=True),
    ]
    jobs.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *futures), 5)
    assert jobs.ran == ["held", "a", "b"]
    queue.close()


async def test_a_full_queue_refuses_new_requests_but_not_the_rest_of_a_reply():
    jobs, queue, running = await busy_queue(max_queue=2)
    waiting = [queue.submit((LATER, 1.0, i, 0), jobs.job(f"w{i}"), admission=True) for i in (1, 2)]
    with pytest.raises(Overloaded, match="tts is overloaded: 2 syntheses already queued"):
        queue.submit((LATER, 1.0, 3, 0), jobs.job("refused"), admission=True)
    assert queue.refused == 1
    rest = queue.submit((LATER, 1.0, 1, 1), jobs.job("rest of w1"), admission=False)
    jobs.gate.set()
    await asyncio.wait_for(asyncio.gather(running, *waiting, rest), 5)
    assert "refused" not in jobs.ran and "rest of w1" in jobs.ran
    queue.close()


async def test_a_cancelled_job_is_dropped_and_an_error_reaches_only_its_caller():
    jobs, queue, blocker = await busy_queue()
    dropped = queue.submit((LATER, 1.0, 1, 0), jobs.job("dropped"), admission=True)
    dropped.cancel()
    assert queue.queued == 0

    def fails() -> str:
        raise RuntimeError("voice broke")

    failing = queue.submit((LATER, 2.0, 2, 0), fails, admission=True)
    after = queue.submit((LATER, 3.0, 3, 0), jobs.job("after"), admission=True)
    jobs.gate.set()
    assert await asyncio.wait_for(after, 5) == "after"
    with pytest.raises(RuntimeError, match="voice broke"):
        await failing
    await blocker
    assert jobs.ran == ["held", "after"]
    queue.close()


async def test_a_job_cancelled_while_the_event_loop_is_busy_is_not_run():
    jobs, queue, blocker = await busy_queue()
    dropped = queue.submit((LATER, 1.0, 1, 0), jobs.job("dropped"), admission=True)
    after = queue.submit((LATER, 2.0, 2, 0), jobs.job("after"), admission=True)
    dropped.cancel()
    # The loop is kept busy (no await) while the worker picks its next job: the
    # cancelled future's callbacks have not run, and the job must be dropped anyway.
    jobs.gate.set()
    assert jobs.running.acquire(timeout=5)
    assert jobs.began == ["held", "after"]
    assert await asyncio.wait_for(after, 5) == "after"
    await blocker
    queue.close()


async def test_closing_fails_waiting_jobs_and_refuses_new_ones():
    jobs, queue, running = await busy_queue()
    waiting = queue.submit((LATER, 1.0, 1, 0), jobs.job("waiting"), admission=True)
    closing = asyncio.create_task(asyncio.to_thread(queue.close))
    with pytest.raises(BatcherClosed, match="tts is shut down"):
        await asyncio.wait_for(waiting, 5)
    jobs.gate.set()
    await asyncio.wait_for(closing, 5)
    assert await running == "held"  # a running job finishes
    with pytest.raises(BatcherClosed):
        queue.submit((FIRST, 0.0, 2, 0), jobs.job("late"), admission=True)
