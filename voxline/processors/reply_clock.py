"""When the caller will have heard the audio sent so far for one reply.

Two processors need this clock and watch the same frames for it: the chunker, to
cut a sentence still being written before the audio sent runs out (its runway),
and the Piper TTS service, to tell the shared engine when each later chunk is
needed. A speculative reply complicates both: its audio waits at the gate until the
caller's turn is committed, so it is heard from the commit, not from when it was
made. One class keeps the rule in one place.

Each user keeps its own time base (the chunker the event loop's clock, the TTS
service ``time.monotonic``, which the engine compares ``needed_at`` with), so the
clock is given the function that reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ReplyClock:
    """When the audio sent so far for a reply will have been heard.

    Audio that is not held plays after the audio sent before it, or now if that has
    already been heard. Audio of a held reply waits at the gate: it is only summed,
    and :meth:`release` (the commit) starts it playing.

    Args:
        now: reads the time the clock counts in.
        held: the reply's audio is held until :meth:`release`.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic, *, held: bool = False):
        self._now = now
        self._ends_at: float | None = None
        self._held_secs: float | None = 0.0 if held else None

    @property
    def held(self) -> bool:
        """Whether the reply's audio waits at the gate for the commit."""
        return self._held_secs is not None

    @property
    def ends_at(self) -> float | None:
        """When the caller will have heard the audio sent so far; ``None``: nothing sent.

        A held reply plays no sooner than the commit, which may come at any moment:
        its audio is counted from now.
        """
        if self._held_secs is not None:
            return self._now() + self._held_secs
        return self._ends_at

    def start(self, *, held: bool) -> None:
        """A reply begins: the audio sent before it no longer counts.

        Args:
            held: the reply is speculative, held at the gate until the commit.
        """
        self._ends_at = None
        self._held_secs = 0.0 if held else None

    def add(self, seconds: float) -> None:
        """``seconds`` of the reply's audio were sent."""
        if self._held_secs is not None:
            self._held_secs += seconds
            return
        now = self._now()
        start = now if self._ends_at is None else max(now, self._ends_at)
        self._ends_at = start + seconds

    def release(self) -> None:
        """The turn was committed: the held audio starts playing now."""
        if self._held_secs is None:
            return
        self._ends_at = self._now() + self._held_secs
        self._held_secs = None

    def reset(self) -> None:
        """Forget the reply: an interruption, or its speculation was withdrawn."""
        self.start(held=False)
