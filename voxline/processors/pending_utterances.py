"""The caller's utterances on their way through STT, and the transcript each one gets.

The latency tracer times a turn from the caller's last word, but a transcript does
not say which utterance it stands for. Utterances go to STT in order and their
transcripts come back in order, so the oldest utterance still waiting is the one a
transcript stands for, except that a transcription may fail (no transcript will
come) and a turn-taker may settle an utterance without one (skipped).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class Utterance:
    """One utterance sent to STT; times on the pipeline clock (ns)."""

    stt_request: int
    speech_end: int
    failed: bool = False
    """Its transcription failed: no transcript will stand for it."""


class PendingUtterances:
    """Utterances sent to STT, oldest first, until their transcripts arrive.

    Args:
        limit: utterances remembered at most (the oldest are forgotten first).
    """

    def __init__(self, limit: int = 64) -> None:
        self._queue: deque[Utterance] = deque(maxlen=limit)

    def sent(self, stt_request: int, speech_end: int) -> None:
        """An utterance went to STT at ``stt_request``; the caller stopped at ``speech_end``."""
        self._queue.append(Utterance(stt_request=stt_request, speech_end=speech_end))

    def skipped(self) -> None:
        """The utterance sent first was settled without a transcript, failed or not."""
        if self._queue:
            self._queue.popleft()

    def failed(self) -> None:
        """The oldest utterance still waiting for a transcript will get none.

        It stays queued, marked, because a turn-taker settles a failed utterance with a
        skip too; a transcript passes over it.
        """
        for utterance in self._queue:
            if not utterance.failed:
                utterance.failed = True
                return

    def take(self) -> Utterance | None:
        """The utterance a transcript stands for: the oldest one whose STT did not fail."""
        while self._queue:
            utterance = self._queue.popleft()
            if not utterance.failed:
                return utterance
        return None

    @property
    def waiting(self) -> bool:
        """Whether a transcript is still to come for some utterance."""
        return any(not utterance.failed for utterance in self._queue)
