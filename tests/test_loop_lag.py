"""The event-loop lag monitor: a loop held by blocking work shows as lag on /metrics, and
in the log with its time."""

from __future__ import annotations

import asyncio
import time

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest

from voxline.server.loop_lag import LoopLag

pytestmark = pytest.mark.asyncio


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    lag = registry.get_sample_value
    return {
        "count": lag("voxline_event_loop_lag_seconds_count") or 0.0,
        "sum": lag("voxline_event_loop_lag_seconds_sum") or 0.0,
        "within_40ms": lag("voxline_event_loop_lag_seconds_bucket", {"le": "0.04"}) or 0.0,
    }


async def test_a_held_loop_is_counted_as_lag_and_logged():
    registry = CollectorRegistry()
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    monitor = LoopLag(registry, interval_secs=0.02)
    monitor.start()
    try:
        await asyncio.sleep(0.2)  # an idle loop: wake-ups on time
        idle = _samples(registry)
        assert idle["count"] >= 3 and idle["within_40ms"] == idle["count"]
        time.sleep(0.15)  # what blocking work on the loop does to every call
        await asyncio.sleep(0.05)
        held = _samples(registry)
    finally:
        await monitor.stop()
        logger.remove(sink)
    assert held["count"] > idle["count"]
    assert held["count"] - held["within_40ms"] == 1  # the one wake-up the block delayed
    assert held["sum"] - idle["sum"] >= 0.1
    assert b"voxline_event_loop_lag_seconds_bucket" in generate_latest(registry)
    late = [line for line in lines if line.startswith("event loop ran")]
    assert len(late) == 1, lines  # the idle wake-ups are not logged
    assert int(late[0].split()[3]) >= 100, late


async def test_stop_ends_the_sampling():
    registry = CollectorRegistry()
    monitor = LoopLag(registry, interval_secs=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    await monitor.stop()
    stopped = _samples(registry)["count"]
    await asyncio.sleep(0.05)
    assert _samples(registry)["count"] == stopped
    await monitor.stop()  # twice is harmless
