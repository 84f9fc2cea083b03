"""Where the caller's words end, by loudness against the line's own noise.

Silero VAD keeps saying "speech" for a while after the last word: over twelve
espeak-ng voices on a phone line (``benchmarks/vad_hangover.py``), its quiet state
came a median 30 ms (p95 60 ms) later than ``early_secs`` after the caller's last
frame louder than -45 dBFS; 40 ms (60 ms) at 16 kHz. Counting the pause from where
the VAD gave up made every turn that much later. The turn-taker therefore also times each
frame's loudness: once the VAD has let go of the speech (its stopping state),
the pause is counted from the last frame that was louder than the line's noise,
at most :data:`MAX_HANGOVER_SECS` back, once the VAD has been stopping for
:data:`MIN_STOPPING_SECS`.

The noise is measured between the caller's turns, so a loud line (a car, a
hiss) raises the bar and falls back to the VAD's own timing, and a quiet line
lets soft speech count as speech.
"""

from __future__ import annotations

from collections import deque

import numpy as np

MAX_HANGOVER_SECS = 0.2
"""How far back of the VAD's stop a pause may be dated: more than the VAD's hangover, which
was 80 ms at most in ``benchmarks/vad_hangover.py``, however soft the words' ending."""
MIN_STOPPING_SECS = 0.06
"""How long the VAD must have judged the audio silent before the pause is dated back
(two of Silero's 32 ms windows: one doubtful window inside a word is not the end)."""
MARGIN_DB = 10.0
"""How much louder than the line's noise a frame must be to count as speech."""
FLOOR_DBFS = -55.0
"""The quietest level that counts as speech, however quiet the line (digital silence)."""
NOISE_FRAMES = 50
"""Frames between turns the noise is measured over (one second of 20 ms frames)."""


def rms_dbfs(pcm: bytes) -> float:
    """The loudness of 16-bit samples, in dB below full scale (-inf for silence)."""
    samples = np.frombuffer(pcm, dtype=np.int16)
    if not samples.size:
        return float("-inf")
    power = float(np.mean(samples.astype(np.float64) ** 2))
    return 10 * np.log10(power / 32768**2) if power > 0 else float("-inf")


class SpeechLevel:
    """Tells a call's speech from its line noise by loudness.

    Args:
        margin_db: how far above the noise speech is.
        floor_dbfs: the lowest level that is speech on a silent line.
    """

    def __init__(self, *, margin_db: float = MARGIN_DB, floor_dbfs: float = FLOOR_DBFS):
        self._margin_db = margin_db
        self._floor_dbfs = floor_dbfs
        self._noise: deque[float] = deque(maxlen=NOISE_FRAMES)
        self._threshold: float | None = floor_dbfs

    def note_noise(self, pcm: bytes) -> None:
        """Measure a frame heard while the caller was quiet (between turns)."""
        self._noise.append(rms_dbfs(pcm))
        self._threshold = None

    @property
    def threshold_dbfs(self) -> float:
        """The level above which a frame is speech: the noise's median plus the margin.

        Measured once per stretch of noise: every frame of a turn is judged against it.
        """
        if self._threshold is None:
            noise = float(np.median(self._noise))
            self._threshold = max(self._floor_dbfs, noise + self._margin_db)
        return self._threshold

    def is_speech(self, pcm: bytes) -> bool:
        """Whether a frame is loud enough, on this line, to be speech."""
        return rms_dbfs(pcm) > self.threshold_dbfs
