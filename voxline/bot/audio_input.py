"""Read a caller's audio clip for ``voxline talk`` and ``voxline dial``, with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Peak below about -50 dBFS: the clip holds no speech for the bot to answer.
SILENT_PEAK = 10 ** (-50 / 20)
MAX_SECS = 600.0


class AudioInputError(ValueError):
    """The caller audio cannot be used; the message says why and what to do."""


def read_caller_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Load a WAV (any rate, mono or stereo) as mono float32 in [-1, 1].

    Returns:
        The samples and their sample rate.

    Raises:
        AudioInputError: missing, empty, unreadable, too long or silent audio.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"input audio not found: {path}")
    if path.stat().st_size == 0:
        raise AudioInputError(f"input audio {path} is empty (0 bytes): record or synthesize a WAV")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioInputError(f"input audio {path} is not a readable WAV file: {exc}") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"input audio {path} holds no samples")
    if data.shape[0] / rate > MAX_SECS:
        raise AudioInputError(
            f"input audio {path} lasts {data.shape[0] / rate:.0f} s: at most {MAX_SECS:.0f} s"
        )
    mono = data.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise AudioInputError(f"input audio {path} contains invalid (NaN or infinite) samples")
    if float(np.max(np.abs(mono))) < SILENT_PEAK:
        raise AudioInputError(f"input audio {path} is silent: there is no caller speech to answer")
    return mono.astype(np.float32), int(rate)
