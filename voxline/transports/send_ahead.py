"""Pacing a phone call's audio a little ahead of the caller's ear.

pipecat's websocket output writes one audio frame, then sleeps the frame's length,
so the far end holds nothing in reserve: any moment the event loop is late by more
than a frame is heard as the voice stopping. And when it is late, pipecat starts its
clock again from the late write, so the lost time is never made up. With four calls
on two cores (Whisper, Piper and vLLM in the same process or beside it) the loop is
late often enough: ``voxline bench --calls 4`` counted 12-38 stalls inside replies,
and an output that logged its writes found the reply's audio waiting in its queue at
every stall (docs/benchmarks.md, "Stalls inside replies").

:class:`SendAhead` paces writes against the caller's playout clock instead: the
audio written plays from the moment it arrives or from the end of the audio before
it, whichever is later, and a write waits only while more than ``lead_secs`` of
written audio are still to play. A late loop then spends the reserve instead of
the caller's patience, and catches up by writing without waiting. Twilio keeps
what it was sent in its own buffer and drops it on ``clear``, which voxline sends
on every interruption; while a barge-in is being decided (the output is held) the
reserve plays out, which bounds the lead to a fraction of a second.

The same clock tells when the caller ran out of audio: a frame written after the
audio before it had finished playing leaves a gap (:attr:`SendAhead.gap_secs`), an
underrun inside a stretch of speech and the natural quiet before one
(:meth:`SendAhead.begin_stretch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SendAhead:
    """When the next audio frame may be written, keeping at most ``lead_secs`` unplayed.

    Args:
        lead_secs: how much written audio may wait to be played at the far end
            (0: each frame as the one before it ends, as pipecat writes).
        clock: the time source (seconds), for tests.
    """

    def __init__(self, lead_secs: float, clock: Callable[[], float] = time.monotonic):
        if lead_secs < 0:
            raise ValueError("lead_secs must be >= 0")
        self.lead_secs = lead_secs
        self._clock = clock
        self._played_until = 0.0
        self._stretch_begins = True
        self.gap_secs = 0.0
        """How long the far end had nothing to play before the last frame written (0 for
        the first frame of a stretch of speech)."""

    def reset(self) -> None:
        """The far end was cleared (an interruption): nothing written is left to play."""
        self._played_until = 0.0
        self._stretch_begins = True

    def begin_stretch(self) -> None:
        """The next frame begins a stretch of speech: the quiet before it is no gap."""
        self._stretch_begins = True

    def ahead_secs(self) -> float:
        """Seconds of written audio the far end has not played yet."""
        return max(0.0, self._played_until - self._clock())

    def wrote(self, frame_secs: float) -> float:
        """A frame of ``frame_secs`` was written: seconds to wait before the next write."""
        now = self._clock()
        self.gap_secs = 0.0 if self._stretch_begins else max(0.0, now - self._played_until)
        self._stretch_begins = False
        self._played_until = max(self._played_until, now) + frame_secs
        return max(0.0, self._played_until - now - self.lead_secs)
