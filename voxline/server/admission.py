"""Admission control: a call beyond capacity is refused at once, never queued as latency.

Checking for a free slot and taking it are one synchronous step
(:meth:`Admission.try_take`), so two requests that arrive together cannot both
pass: there is no ``await`` between the check and the take. A slot is taken
when the call is *promised* (the Twilio webhook answers with a stream, the WebRTC
offer is answered) and held by the call once it runs. A promised call that never
arrives (Twilio never opens the stream, a browser never connects) gives its slot
back when its reservation expires.

A process that drains (:mod:`voxline.server.drain`) *closes* its admission: every
new call is refused, while the reservations already made can still be claimed by
their calls, and :meth:`Admission.wait_idle` tells when the last call has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class CallRejected(RuntimeError):
    """The server is at capacity; the message says so."""


class Slot:
    """One call's place in :class:`Admission`, from the promise to the end of the call.

    A new slot is a *reservation*: it lapses at ``expires_at`` unless the call
    claims it first (:meth:`Admission.hold`). Releasing twice is harmless.

    Args:
        admission: the admission it belongs to.
        key: what the reservation is for (a Twilio CallSid), or None.
        expires_at: when an unclaimed reservation lapses (monotonic seconds), or None.
    """

    def __init__(self, admission: Admission, key: str | None, expires_at: float | None):
        self._admission = admission
        self.key = key
        self.expires_at = expires_at
        self.held = False
        self.released = False

    def expired(self, now: float) -> bool:
        """Whether this is an unclaimed reservation past its time."""
        return not self.held and self.expires_at is not None and now >= self.expires_at

    def release(self) -> None:
        """Give the slot back (the call ended, or the promise was withdrawn)."""
        self._admission._release(self)


class Admission:
    """Counts the slots in use (calls and reservations) and refuses one more than ``max_calls``.

    Args:
        max_calls: how many calls this process serves at once.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, max_calls: int, clock: Callable[[], float] = time.monotonic):
        self.max_calls = max_calls
        self.refused = 0
        self.closed = False
        """No new call is taken (the process drains); reservations can still be claimed."""
        self._clock = clock
        self._released = asyncio.Event()
        self._slots: set[Slot] = set()
        self._by_key: dict[str, Slot] = {}

    def _expire(self) -> None:
        now = self._clock()
        for slot in [slot for slot in self._slots if slot.expired(now)]:
            self._release(slot)

    def _release(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        self._slots.discard(slot)
        if slot.key is not None and self._by_key.get(slot.key) is slot:
            del self._by_key[slot.key]
        self._released.set()

    @property
    def active(self) -> int:
        """Slots in use: calls in progress plus reservations not yet claimed or expired."""
        self._expire()
        return len(self._slots)

    @property
    def reserved(self) -> int:
        """Reservations not yet claimed by their call."""
        self._expire()
        return sum(1 for slot in self._slots if not slot.held)

    @property
    def held(self) -> int:
        """Calls in progress (slots their call holds)."""
        return sum(1 for slot in self._slots if slot.held)

    @property
    def full(self) -> bool:
        """Whether every slot is in use (a new call would be refused for capacity)."""
        return self.active >= self.max_calls

    def busy_reason(self) -> str:
        """Why a new call is refused now, in a few words."""
        if self.closed:
            return "draining: this server takes no new calls"
        return f"busy: {self.active} of {self.max_calls} calls in progress"

    def close(self) -> None:
        """Take no new call from now on; calls in progress and reservations go on."""
        self.closed = True

    async def wait_idle(self, timeout: float, *, calls_only: bool = False) -> bool:
        """Wait until no slot is in use: every call ended, every reservation claimed
        (and its call ended) or lapsed. Returns False if ``timeout`` seconds pass first.

        Woken by each release; a reservation that lapses is noticed at its expiry.

        Args:
            timeout: seconds.
            calls_only: wait for the calls in progress only, not for reservations.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.held if calls_only else self.active:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            expiries = [s.expires_at for s in self._slots if not s.held and s.expires_at]
            if expiries and not calls_only:  # the next lapse, on this admission's clock
                remaining = min(remaining, max(0.01, min(expiries) - self._clock()))
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), remaining)
        return True

    def try_take(self, *, key: str | None = None, hold_secs: float | None = None) -> Slot | None:
        """Check for a free slot and take it, in one step; None when every slot is in use.

        Args:
            key: names the reservation so the call can :meth:`claim` it later
                (a second reservation under the same key replaces the first).
            hold_secs: how long the reservation waits for its call; None: forever
                (the caller holds the slot at once).

        Returns:
            The slot, or None (counted in ``refused``): every slot is in use, or the
            admission is closed.
        """
        if key is not None and (previous := self._by_key.get(key)) is not None:
            self._release(previous)  # Twilio retried the webhook for the same call
        if self.closed or self.full:
            self.refused += 1
            return None
        expires_at = None if hold_secs is None else self._clock() + hold_secs
        slot = Slot(self, key, expires_at)
        self._slots.add(slot)
        if key is not None:
            self._by_key[key] = slot
        return slot

    def claim(self, key: str) -> Slot | None:
        """The live reservation made under ``key``, or None (never made, or expired)."""
        self._expire()
        slot = self._by_key.get(key)
        return None if slot is None or slot.held else slot

    @asynccontextmanager
    async def hold(self, slot: Slot) -> AsyncIterator[Slot]:
        """Hold ``slot`` for the duration of the block (it no longer expires), then release it.

        Raises:
            CallRejected: the reservation lapsed before the call claimed it.
        """
        if slot.released or slot.expired(self._clock()):
            self._release(slot)
            self.refused += 1
            raise CallRejected("the reserved line expired before the call arrived")
        slot.held = True
        try:
            yield slot
        finally:
            self._release(slot)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Slot]:
        """Take a slot and hold it for the duration of the block.

        Raises:
            CallRejected: every slot is taken.
        """
        slot = self.try_take()
        if slot is None:
            raise CallRejected(self.busy_reason())
        async with self.hold(slot):
            yield slot
