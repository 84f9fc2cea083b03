"""Holding the bot's audio while the caller may be interrupting it.

People stop talking as soon as the other person starts, then go on if it was only
an "uh-huh". A barge-in decision needs words or a long stretch of speech (a cough
must not stop the bot), which takes ~0.3 s of speech and a Whisper pass; waiting for
it before the caller hears the bot stop adds all of that to the barge-in as heard.
So the turn-taker *holds* the output as soon as the VAD hears speech over the bot:
the output transport stops writing audio (the frame being written plays out), and
either the interruption drops what is left or, for a backchannel or a cough, the
turn-taker releases the hold and the bot goes on from where it stopped.

The output transport owns an :class:`OutputHold`, awaits :meth:`OutputHold.wait`
before writing each audio frame, and calls :meth:`OutputHold.interrupt` on an
interruption: the frame that waited is then dropped (pipecat's output would
otherwise write the frame in hand after an interruption, a 40 ms blip of the line
the caller stopped). A non-interruptible frame (a line the persona made
non-interruptible) is never held. A hold nobody releases ends by itself after
``max_secs``, so a lost release can never silence a call.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from pipecat.frames.frames import OutputAudioRawFrame

DEFAULT_MAX_HOLD_SECS = 2.0
"""Longer than any barge-in decision (``interrupt_min_secs`` is at most a few tenths of
a second by default, a Whisper check ~0.1 s); a safety net, not a setting."""


class OutputHold:
    """Whether an output transport may write the bot's audio right now.

    Args:
        max_secs: a hold lasting this long is released by itself.
    """

    def __init__(self, max_secs: float = DEFAULT_MAX_HOLD_SECS):
        self._max_secs = max_secs
        self._released = asyncio.Event()
        self._released.set()
        self._held_at: float | None = None
        self._interruptions = 0
        self.holds = 0
        """How many times the output was held (for tests)."""
        self.held_secs = 0.0
        """Total seconds audio writes waited on a hold (for tests)."""

    @property
    def held(self) -> bool:
        """Whether audio writes wait now."""
        return not self._released.is_set()

    def hold(self) -> None:
        """Stop writing the bot's audio until :meth:`release` (or ``max_secs``)."""
        if self.held:
            return
        self._released.clear()
        self._held_at = time.monotonic()
        self.holds += 1

    def release(self) -> None:
        """Let the bot's audio go on (after a backchannel) or the next reply play."""
        self._released.set()
        self._held_at = None

    def interrupt(self) -> None:
        """The bot was interrupted: a frame waiting on the hold is dropped, and the
        next reply plays."""
        if self.held:
            self._interruptions += 1
        self.release()

    async def wait(self, frame: OutputAudioRawFrame) -> bool:
        """Before writing ``frame``: wait while the output is held, unless the frame
        belongs to a non-interruptible line.

        Returns:
            Whether to write the frame: False when the bot was interrupted meanwhile.
        """
        if self._released.is_set() or not getattr(frame, "interruptible", True):
            return True
        interruptions = self._interruptions
        began = time.monotonic()
        remaining = self._max_secs - (began - (self._held_at or began))
        try:
            await asyncio.wait_for(self._released.wait(), timeout=max(0.0, remaining))
        except TimeoutError:
            logger.warning(f"bot audio held for {self._max_secs:.1f} s; playing on")
            self.release()
        finally:
            self.held_secs += time.monotonic() - began
        return self._interruptions == interruptions
