"""Frames voxline adds to pipecat's vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame


@dataclass
class TranscriptionSkippedFrame(DataFrame):
    """An utterance the STT heard but that produced no text (silence, noise, too short).

    Pushed instead of a TranscriptionFrame so that whoever tracks turns knows the
    utterance is settled and no reply will follow.

    Parameters:
        reason: why no text was produced.
        audio_secs: length of the utterance.
    """

    reason: str = ""
    audio_secs: float = 0.0
