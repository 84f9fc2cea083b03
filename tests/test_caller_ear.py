"""The simulated caller's ear: Twilio's playout of media, marks and clear."""

from __future__ import annotations

import numpy as np

from voxline.transports.caller_ear import CallerEar

RATE = 8000


def _audio(secs: float, level: int = 1000) -> np.ndarray:
    return np.full(int(secs * RATE), level, dtype=np.int16)


def test_audio_plays_back_to_back_and_a_mark_waits_for_the_audio_before_it():
    ear = CallerEar(RATE)
    assert ear.media(0.0, _audio(0.5)) == 0.0
    assert ear.media(0.1, _audio(0.5)) == 0.5  # queued behind the first
    assert ear.most_ahead_secs == 0.9
    ear.mark(0.1, "chunk-1")
    assert ear.marks_due(0.99) == [] and ear.owes_marks
    assert ear.marks_due(1.0) == ["chunk-1"] and not ear.owes_marks
    assert ear.media(2.0, _audio(0.1)) == 2.0  # after a gap, at once


def test_clear_drops_the_unplayed_audio_and_echoes_the_held_marks_at_once():
    ear = CallerEar(RATE)
    ear.media(0.0, _audio(1.0))
    ear.mark(0.0, "chunk-1")
    ear.media(0.0, _audio(1.0, level=2000))
    ear.mark(0.0, "chunk-2")
    ear.clear(0.25)
    assert ear.marks_due(0.25) == ["chunk-1", "chunk-2"]
    assert ear.playhead == 0.25
    heard = ear.timeline()
    assert np.count_nonzero(heard) == int(0.25 * RATE)  # a quarter second of the first
    assert not np.any(heard == 2000)  # none of the second
