"""The micro-batcher: batches by size and by time, isolates errors, honours cancellation
and refuses overload; every caller gets its own result."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxline.engines.batcher import BatcherClosed, MicroBatcher, Overloaded


class Recorder:
    """A model stand-in: records every batch; can be held closed to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append(list(items))
        return [ValueError(f"bad item {i}") if i < 0 else i * 10 for i in items]


async def test_a_full_batch_runs_without_waiting_for_the_deadline():
    model = Recorder()
    batcher = MicroBatcher(model, name="t", max_batch=4, max_wait_ms=60_000)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(4))), timeout=5
    )
    assert results == [0, 10, 20, 30]
    assert model.batches == [[0, 1, 2, 3]]
    await batcher.close()


async def test_a_partial_batch_runs_when_its_oldest_item_is_due():
    model = Recorder()
    batcher = MicroBatcher(model, name="t", max_batch=8, max_wait_ms=50)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3))), 5)
    assert results == [0, 10, 20]
    assert model.batches == [[0, 1, 2]]
    record = batcher.records[-1]
    assert record.size == 3 and record.failed == 0
    assert record.max_queue_wait_secs >= 0.04
    await batcher.close()


async def test_items_beyond_max_batch_go_to_the_next_batch():
    model = Recorder()
    batcher = MicroBatcher(model, name="t", max_batch=3, max_wait_ms=5)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
    assert results == [i * 10 for i in range(7)]
    assert [len(b) for b in model.batches] == [3, 3, 1]
    await batcher.close()


async def test_a_shared_queue_gives_idle_workers_a_batch_each():
    model = Recorder()
    shared = MicroBatcher(model, name="t", max_batch=8, max_wait_ms=50, workers=2, share_queue=True)
    results = await asyncio.gather(*(shared.submit(i) for i in range(4)))
    assert results == [0, 10, 20, 30]
    assert sorted(model.batches) == [[0, 1], [2, 3]]
    await shared.close()

    model = Recorder()
    one_takes_all = MicroBatcher(model, name="t", max_batch=8, max_wait_ms=50, workers=2)
    await asyncio.gather(*(one_takes_all.submit(i) for i in range(4)))
    assert model.batches == [[0, 1, 2, 3]]
    await one_takes_all.close()


async def test_a_shared_queue_leaves_a_busy_worker_its_share():
    # Worker 1 runs item 0 (held); items 1-4 queue meanwhile. The idle worker takes half
    # of them, and worker 1 the other half once it is done, instead of one batch of four.
    model = Recorder()
    model.gate.clear()
    batcher = MicroBatcher(
        model, name="t", max_batch=8, max_wait_ms=20, workers=2, share_queue=True
    )
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.to_thread(model.started.wait, 5)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
    while len(batcher.records) < 1 and batcher.queued > 2:
        await asyncio.sleep(0.01)
    model.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 5) == [0, 10, 20, 30, 40]
    assert model.batches[0] in ([0], [1, 2])
    assert sorted(model.batches) == [[0], [1, 2], [3, 4]]
    await batcher.close()


async def test_one_bad_item_fails_only_its_caller():
    model = Recorder()
    batcher = MicroBatcher(model, name="t", max_batch=4, max_wait_ms=5)
    outcomes = await asyncio.gather(
        *(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True
    )
    assert outcomes[0] == 10 and outcomes[2] == 20
    assert isinstance(outcomes[1], ValueError) and "bad item -1" in str(outcomes[1])
    assert batcher.records[-1].failed == 1
    await batcher.close()


async def test_a_batch_that_raises_is_retried_item_by_item():
    def model(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise RuntimeError(f"cannot stack {items}")
        return [i + 1 for i in items]

    batcher = MicroBatcher(model, name="t", max_batch=4, max_wait_ms=5)
    outcomes = await asyncio.gather(
        *(batcher.submit(i) for i in (1, -5, 3)), return_exceptions=True
    )
    assert outcomes[0] == 2 and outcomes[2] == 4
    assert isinstance(outcomes[1], RuntimeError) and "[-5]" in str(outcomes[1])
    await batcher.close()


async def test_a_wrong_number_of_results_is_an_error_not_a_mixup():
    batcher = MicroBatcher(lambda items: items[:1], name="t", max_batch=4, max_wait_ms=5)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    # Retried one by one, each call returns its own single result.
    assert outcomes == [0, 1, 2]
    await batcher.close()


async def test_a_cancelled_caller_is_dropped_before_its_batch_starts():
    model = Recorder()
    model.gate.clear()
    batcher = MicroBatcher(model, name="t", max_batch=1, max_wait_ms=0, workers=1)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.to_thread(model.started.wait, 5)  # the worker is now busy with item 1
    doomed = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)  # let both reach the queue
    doomed.cancel()
    model.gate.set()
    assert await first == 10 and await kept == 30
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert model.batches == [[1], [3]]
    await batcher.close()


async def test_a_full_queue_refuses_at_once():
    model = Recorder()
    model.gate.clear()
    batcher = MicroBatcher(model, name="stt", max_batch=1, max_wait_ms=0, max_queue=2, workers=1)
    running = asyncio.create_task(batcher.submit(0))
    await asyncio.to_thread(model.started.wait, 5)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="stt is overloaded: 2 requests already queued"):
        await batcher.submit(3)
    model.gate.set()
    assert await asyncio.gather(running, *queued) == [0, 10, 20]
    await batcher.close()


async def test_closing_fails_queued_work_and_refuses_new_work():
    model = Recorder()
    model.gate.clear()
    batcher = MicroBatcher(model, name="t", max_batch=1, max_wait_ms=0, workers=1)
    running = asyncio.create_task(batcher.submit(0))
    await asyncio.to_thread(model.started.wait, 5)
    queued = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    model.gate.set()
    await closing
    assert await running == 0
    with pytest.raises(BatcherClosed):
        await queued
    with pytest.raises(BatcherClosed):
        await batcher.submit(2)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda items: items, name="t", max_batch=0)


@settings(max_examples=15, deadline=None)
@given(
    values=st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=100),
    max_batch=st.integers(min_value=1, max_value=16),
    workers=st.integers(min_value=1, max_value=3),
)
def test_every_caller_gets_its_own_result(values: list[int], max_batch: int, workers: int):
    async def scenario() -> list[int | BaseException]:
        def model(items: list[int]) -> list[int | BaseException]:
            return [ValueError(str(i)) if i % 7 == 0 else i * 3 for i in items]

        batcher = MicroBatcher(
            model, name="p", max_batch=max_batch, max_wait_ms=1, workers=workers, max_queue=100
        )

        async def caller(value: int) -> int:
            await asyncio.sleep(0.001 * (abs(value) % 3))  # staggered arrivals
            return await batcher.submit(value)

        try:
            return await asyncio.gather(*(caller(v) for v in values), return_exceptions=True)
        finally:
            await batcher.close()

    outcomes = asyncio.run(scenario())
    for value, outcome in zip(values, outcomes, strict=True):
        if value % 7 == 0:
            assert isinstance(outcome, ValueError) and str(outcome) == str(value)
        else:
            assert outcome == value * 3
