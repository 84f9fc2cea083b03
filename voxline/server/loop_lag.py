"""How late the event loop runs what is due: ``voxline_event_loop_lag_seconds``.

Every call's audio is paced on the server's one event loop: a phone reply's next
message goes out when the one before has nearly played. Whatever holds the loop
(work done on it instead of in a worker thread, a burst of frames from many calls)
delays every call at once, and the caller hears a stall. The stage histograms do
not show it; this does: a task asks to wake every :data:`INTERVAL_SECS` and records
how much later than asked it woke.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from prometheus_client import CollectorRegistry, Histogram

from voxline.server.background import BackgroundJob

INTERVAL_SECS = 0.1
"""How often the loop's lateness is sampled (ten wake-ups a second: nothing to the loop)."""
LAG_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (s): fine below the 60 ms of a phone message, where stalls begin to be heard."""
LOGGED_LAG_SECS = 0.06
"""A wake-up this late is logged (DEBUG) with its time, to match with the stalls callers heard."""


class LoopLag(BackgroundJob):
    """Samples the running event loop's lateness into a histogram on ``registry``.

    Args:
        registry: the server's own registry (``/metrics`` renders it).
        interval_secs: time between samples.
    """

    task_name = "voxline-loop-lag"

    def __init__(self, registry: CollectorRegistry, interval_secs: float = INTERVAL_SECS):
        self.interval_secs = interval_secs
        self.seconds = Histogram(
            "voxline_event_loop_lag_seconds",
            "How much later than asked the server's event loop ran a wake-up, sampled "
            f"every {interval_secs:g} s: what every call's audio pacing waited for.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + self.interval_secs
            await asyncio.sleep(self.interval_secs)  # the sampling interval, not a sync
            lag = max(0.0, time.monotonic() - due)
            self.seconds.observe(lag)
            if lag >= LOGGED_LAG_SECS:
                logger.debug(f"event loop ran {lag * 1e3:.0f} ms late")
