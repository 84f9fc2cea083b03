"""What a simulated phone call reports: each turn as the caller heard it, and the call.

:class:`~voxline.transports.twilio_caller.TwilioCaller` returns a
:class:`DialResult` on the caller's clock (seconds since the stream opened): the
audio heard, the messages exchanged, and for each thing the caller said when the
bot's answer started playing (:class:`HeardTurn`), which is the voice-to-voice
latency a caller lives with. :class:`DialError` is a call the server refused or a
protocol it broke. ``voxline dial``, ``voxline bench`` and the tests read these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DialError(RuntimeError):
    """The server refused the call or broke the protocol."""


@dataclass
class HeardTurn:
    """One caller utterance and the bot's answer as the caller heard it."""

    caller_end: float
    bot_start: float | None = None
    caller_start: float | None = None

    @property
    def latency_ms(self) -> float | None:
        """Voice-to-voice: caller's last voiced frame sent → bot's first voiced audio played."""
        return (
            None if self.bot_start is None else round((self.bot_start - self.caller_end) * 1e3, 1)
        )


@dataclass
class DialResult:
    """What happened on the call, on the caller's clock (seconds since the stream opened)."""

    call_sid: str
    turns: list[HeardTurn]
    heard: np.ndarray
    received: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)
    speech_onsets: list[float] = field(default_factory=list)
    marks_echoed: int = 0
    close_code: int | None = None
    played: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """Each ``media`` message of the bot's as (time it started playing, its samples)."""
    most_ahead_secs: float = 0.0
    """The most bot audio that waited to be played at once (received, not yet heard)."""
    opened_at: float = 0.0
    """Wall-clock time (``time.time()``) of the caller's clock's zero, to find its moments in
    the server's log."""
