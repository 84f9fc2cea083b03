"""Seconds of the bot's audio produced and written: where a queued reply starts playing.

When a reply is queued behind audio still playing (the greeting, or a reply that had
not finished), the transport starts no new speaking period, so its first audio has no
frame of its own. The ledger counts seconds instead: the audio TTS produced before
the reply, and the audio the transport has written since; the reply starts with the
chunk that crosses that mark.
"""

from __future__ import annotations

SLACK_SECS = 1e-3
"""The transport's chunks need not align with TTS frames."""


class AudioLedger:
    """Seconds of bot audio produced by TTS (on its way out) and written by the transport."""

    def __init__(self) -> None:
        self.produced_secs = 0.0
        self.written_secs = 0.0
        self._reply_starts_at: float | None = None

    def produced(self, secs: float, *, queued_reply_starts: bool = False) -> None:
        """TTS produced ``secs`` of audio; ``queued_reply_starts``: a reply's first audio,
        queued behind audio the transport is still writing."""
        if queued_reply_starts:
            self._reply_starts_at = self.produced_secs
        self.produced_secs += secs

    def written(self, secs: float) -> bool:
        """The transport wrote ``secs`` of audio; True when this write starts the queued
        reply (once)."""
        self.written_secs += secs
        starts_at = self._reply_starts_at
        if starts_at is None or self.written_secs <= starts_at + SLACK_SECS:
            return False
        self._reply_starts_at = None
        return True

    def forget_queued_reply(self) -> None:
        """No queued reply is waiting to start (a new turn began, or it was dropped)."""
        self._reply_starts_at = None

    def drained(self) -> None:
        """Nothing produced is left to write (the transport's queue ran dry or was dropped)."""
        self.written_secs = self.produced_secs
