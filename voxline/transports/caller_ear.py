"""The far end of a phone stream: the bot's audio played on the caller's clock, as Twilio does.

Twilio plays each ``media`` message when it arrives or when the audio before it has
finished, whichever is later; echoes a ``mark`` once the audio sent before it has
played; and on ``clear`` drops what it has not played yet and echoes the marks it
held at once. :class:`CallerEar` keeps that timeline for the simulated caller's
media stream (:mod:`voxline.transports.twilio_caller_stream`), which records what the
caller heard and when.
"""

from __future__ import annotations

import numpy as np


class CallerEar:
    """The bot's audio as the caller hears it, and the marks it owes the server.

    Args:
        rate: the stream's sample rate (8 kHz on Twilio).
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.played: list[tuple[float, np.ndarray]] = []
        """Each ``media`` message as (time it starts playing, its samples)."""
        self.playhead = 0.0
        """When the audio received so far will have finished playing."""
        self.most_ahead_secs = 0.0
        """The most audio that waited to be played at once (received, not yet heard)."""
        self._marks: list[tuple[float, str]] = []

    def media(self, now: float, pcm: np.ndarray) -> float:
        """Audio arrived at ``now``: returns when it starts playing."""
        start = max(now, self.playhead)
        self.playhead = start + pcm.size / self.rate
        self.most_ahead_secs = max(self.most_ahead_secs, self.playhead - now)
        self.played.append((start, pcm))
        return start

    def mark(self, now: float, name: str) -> None:
        """A mark arrived: it is due once the audio before it has played."""
        self._marks.append((max(now, self.playhead), name))

    def clear(self, now: float) -> None:
        """Drop what has not played by ``now``; the held marks are due at once."""
        kept = []
        for start, pcm in self.played:
            if start < now:
                kept.append((start, pcm[: int((now - start) * self.rate)]))
        self.played[:] = kept
        self.playhead = now
        self._marks = [(now, name) for _, name in self._marks]

    def marks_due(self, now: float) -> list[str]:
        """The marks to echo by ``now``, in order (each once)."""
        due = []
        while self._marks and self._marks[0][0] <= now:
            due.append(self._marks.pop(0)[1])
        return due

    @property
    def owes_marks(self) -> bool:
        """Whether some mark is still to be echoed."""
        return bool(self._marks)

    def timeline(self) -> np.ndarray:
        """The bot's audio placed at the times it played, silence between."""
        if not self.played:
            return np.zeros(0, dtype=np.int16)
        end = max(start + pcm.size / self.rate for start, pcm in self.played)
        out = np.zeros(int(end * self.rate) + 1, dtype=np.int16)
        for start, pcm in self.played:
            at = int(start * self.rate)
            out[at : at + pcm.size] = pcm[: out.size - at]
        return out
