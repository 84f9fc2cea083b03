"""A token bucket per key: about ``limit`` events per ``window_secs``, bursts up to ``limit``.

Shared by every bound on how fast a peer may act: HTTP requests per address, WebRTC
offers and trickled candidates per address, messages per Twilio media stream.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """At most about ``limit`` events per address per ``window_secs``, as a token bucket.

    Each address holds ``limit`` tokens, refilled at ``limit / window_secs`` a
    second; an event takes one. Memory is two numbers per address, and at most
    ``max_keys`` addresses are remembered (the least recently seen are forgotten
    first), so a flood from many addresses cannot grow it without bound.
    """

    def __init__(self, limit: int, window_secs: float = 60.0, max_keys: int = 10_000):
        self.limit = limit
        self.window_secs = window_secs
        self.max_keys = max_keys
        self._rate = limit / window_secs
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, address: str, now: float | None = None) -> bool:
        """Record one event for ``address``; False when it is over the limit."""
        now = time.monotonic() if now is None else now
        tokens, since = self._buckets.pop(address, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - since) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[address] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may send one more event."""
        now = time.monotonic() if now is None else now
        tokens, since = self._buckets.get(address, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - since) * self._rate)
        return max(0.0, (1.0 - tokens) / self._rate)
