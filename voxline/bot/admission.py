"""Admission control: a call beyond capacity is refused at once, never queued as latency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CallRejected(RuntimeError):
    """The server is at capacity; the message says so."""


class Admission:
    """Counts live calls and refuses one more than ``max_calls``.

    Args:
        max_calls: how many calls this process serves at once.
    """

    def __init__(self, max_calls: int):
        self.max_calls = max_calls
        self.active = 0
        self.refused = 0

    @property
    def full(self) -> bool:
        """Whether a new call would be refused now."""
        return self.active >= self.max_calls

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one call slot for the duration of the block.

        Raises:
            CallRejected: every slot is taken.
        """
        if self.full:
            self.refused += 1
            raise CallRejected(f"busy: {self.active} of {self.max_calls} calls in progress")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
