"""Graceful drain: how a ``voxline serve`` process stops without dropping a call.

:meth:`Drain.run` is what the first SIGTERM (or Ctrl-C) starts once the server
listens:

1. the process stops admitting: its :class:`~voxline.server.admission.Admission`
   closes, so a new phone call gets the busy answer and a new browser offer the
   busy 503, and ``/health/ready`` turns 503 at once (a balancer stops sending);
2. the calls in progress go on untouched (a turn being answered finishes), and
   reservations already promised can still be claimed by their streams, until
   every one has ended or ``drain_timeout_secs`` has passed;
3. then each call still in progress hears its persona's goodbye and is hung up
   (a phone call through Twilio's REST API, as ``end_call`` does), and the drain
   waits for those goodbyes to finish, at most :data:`GOODBYE_GRACE_SECS`.

Only then does ``serve`` stop the server, whose shutdown closes the shared
engines: they outlive the last call. The calls register themselves with
:meth:`Drain.track`, giving what ends them politely.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator

from loguru import logger

from voxline.bot.phone_control import GOODBYE_TIMEOUT_SECS
from voxline.server.admission import Admission

GOODBYE_GRACE_SECS = GOODBYE_TIMEOUT_SECS + 5.0
"""How long the goodbyes said at the drain's deadline may take (Twilio confirming the
goodbye played, the REST hang-up) before the server stops regardless."""

DRAIN_TIMEOUT = "server drain timeout"
"""End reason of a call still running at the drain's deadline (it heard the goodbye)."""

EndCall = Callable[[], Awaitable[None]]
"""Says the persona's goodbye on one call, then hangs it up."""


class Drain:
    """The process's drain: admission closed, calls left to end, the rest ended at a deadline.

    Args:
        admission: the process's call slots (phone and browser calls share them).
        timeout_secs: how long calls in progress may go on once the drain starts.
        goodbye_grace_secs: how long the goodbyes at the deadline may take.
    """

    def __init__(
        self,
        admission: Admission,
        *,
        timeout_secs: float,
        goodbye_grace_secs: float = GOODBYE_GRACE_SECS,
    ):
        self.admission = admission
        self.timeout_secs = timeout_secs
        self.goodbye_grace_secs = goodbye_grace_secs
        self.draining = False
        self.ended_at_deadline = 0
        """Calls that were still in progress at the deadline and heard the goodbye."""
        self._calls: dict[int, tuple[str, EndCall]] = {}
        self._ids = itertools.count()
        self._past_deadline = False
        self._goodbyes: list[asyncio.Task[None]] = []

    @property
    def calls(self) -> int:
        """Calls in progress that registered how to end them."""
        return len(self._calls)

    @contextlib.contextmanager
    def track(self, name: str, end: EndCall) -> Iterator[None]:
        """Register a call in progress for the duration of the block.

        Args:
            name: the call, for the log (``call CA...``, ``browser call ...``).
            end: says the goodbye and hangs up; called at most once, at the deadline.
        """
        key = next(self._ids)
        self._calls[key] = (name, end)
        if self._past_deadline:  # a promised call that started after the deadline
            self._goodbyes.append(asyncio.ensure_future(self._end(name, end)))
        try:
            yield
        finally:
            self._calls.pop(key, None)

    def begin(self) -> None:
        """Stop admitting new calls (readiness turns 503). Idempotent."""
        if not self.draining:
            self.draining = True
            self.admission.close()

    async def run(self) -> bool:
        """Drain: stop admitting, wait for the calls, end the rest at the deadline.

        Returns:
            True when no call was left at the end (the usual case), False when
            some did not end even after their goodbye (the server then closes them).
        """
        self.begin()
        calls, promised = self.admission.held, self.admission.reserved
        logger.info(
            f"draining: no new calls; waiting up to {self.timeout_secs:g} s for "
            f"{calls} call{'s' if calls != 1 else ''} in progress and {promised} promised"
        )
        if await self.admission.wait_idle(self.timeout_secs):
            logger.info("drained: every call has ended")
            return True
        remaining = list(self._calls.values())
        self.ended_at_deadline = len(remaining)
        logger.info(
            f"drain_timeout_secs ({self.timeout_secs:g} s) reached: saying goodbye to "
            f"{len(remaining)} call{'s' if len(remaining) != 1 else ''}"
        )
        self._past_deadline = True
        self._goodbyes += [asyncio.create_task(self._end(name, end)) for name, end in remaining]
        try:
            # Reservations no longer count: a stream that has not arrived by now never will.
            idle = await self.admission.wait_idle(self.goodbye_grace_secs, calls_only=True)
        finally:
            for task in self._goodbyes:  # a caller who hung up during it leaves one waiting
                task.cancel()
            await asyncio.gather(*self._goodbyes, return_exceptions=True)
        if idle:
            logger.info("drained: every call has ended")
            return True
        logger.warning(f"drain: {self.admission.active} calls still open; closing them")
        return False

    @staticmethod
    async def _end(name: str, end: EndCall) -> None:
        try:
            await end()
        except Exception as exc:  # one call's failure must not keep the others on
            logger.error(f"drain: {name}: the goodbye failed ({type(exc).__name__}: {exc})")
