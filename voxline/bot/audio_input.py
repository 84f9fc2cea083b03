"""Read a caller's audio clip for ``voxline talk`` and ``voxline dial``, with clear errors.

The clip is the caller's side of a whole call, so it is bounded before it is
decoded: at most :data:`MAX_SECS` of audio, at a sample rate a voice can be
heard at, with few channels. A file whose header promises six hours (a few
kilobytes on disk when sparse, gigabytes once decoded) is refused from its
header; a compressed one is never decoded past the bound.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

# Peak below about -50 dBFS: the clip holds no speech for the bot to answer.
SILENT_PEAK = 10 ** (-50 / 20)
MAX_SECS = 600.0
"""Longest caller clip: ten minutes, longer than any single call the tests or a demo need."""
MIN_RATE, MAX_RATE = 8_000, 192_000
"""Sample rates accepted: telephone audio up to studio audio."""
MAX_CHANNELS = 8

# libsndfile reports a WAV whose data chunk is longer than the file as
# "data : 64000 (should be 31978)". Streaming writers that cannot seek back put a
# placeholder length there (0, or 0x7FFFF000 and above): not a truncation.
_WAV_DATA_LENGTH = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_LENGTH = 0x7FFF_F000


class AudioInputError(ValueError):
    """The caller audio cannot be used; the message says why and what to do."""


def read_caller_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Load an audio file (WAV or another format libsndfile reads) as mono float32.

    Returns:
        The samples in [-1, 1] and their sample rate.

    Raises:
        AudioInputError: missing, empty, unreadable, truncated, too long, at an
            unusable rate or channel count, or silent audio.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        what = "not found" if not path.exists() else "not a regular file"
        raise AudioInputError(f"input audio {what}: {path}")
    if path.stat().st_size == 0:
        raise AudioInputError(f"input audio {path} is empty (0 bytes): record or synthesize a WAV")
    try:
        with soundfile.SoundFile(str(path)) as sound:
            rate, channels, frames = sound.samplerate, sound.channels, sound.frames
            _check_header(path, rate, channels, frames, sound.extra_info)
            limit = int(MAX_SECS * rate)
            # Block by block, mixed down to mono as it comes: memory holds one channel.
            blocks = [
                block.mean(axis=1)
                for block in sound.blocks(
                    blocksize=rate, frames=limit + 1, dtype="float32", always_2d=True
                )
            ]
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioInputError(
            f"input audio {path} is not a readable WAV file (nor FLAC or OGG): "
            f"{_libsndfile_reason(exc)}"
        ) from None
    mono = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if mono.size == 0:
        raise AudioInputError(f"input audio {path} holds no samples")
    if mono.size > limit:
        raise AudioInputError(f"input audio {path} lasts more than {MAX_SECS:.0f} s: cut it")
    if not np.all(np.isfinite(mono)):
        raise AudioInputError(f"input audio {path} contains invalid (NaN or infinite) samples")
    if float(np.max(np.abs(mono))) < SILENT_PEAK:
        raise AudioInputError(f"input audio {path} is silent: there is no caller speech to answer")
    return mono.astype(np.float32), int(rate)


def _check_header(path: Path, rate: int, channels: int, frames: int, info: str) -> None:
    """Refuse what the header alone shows to be unusable, before decoding anything."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioInputError(
            f"input audio {path} is sampled at {rate} Hz: use {MIN_RATE}-{MAX_RATE} Hz "
            "(e.g. sox in.wav -r 16000 out.wav)"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioInputError(
            f"input audio {path} has {channels} channels: use mono or stereo audio"
        )
    if 0 < frames < 2**62 and frames / rate > MAX_SECS:
        raise AudioInputError(
            f"input audio {path} lasts {frames / rate:.0f} s: at most {MAX_SECS:.0f} s (cut it)"
        )
    if match := _WAV_DATA_LENGTH.search(info):
        declared, present = int(match[1]), int(match[2])
        if 0 < present < declared < _UNKNOWN_LENGTH:
            raise AudioInputError(
                f"input audio {path} is truncated: its header promises {declared} bytes of "
                f"audio and the file holds {present}: record or export it again"
            )


def _libsndfile_reason(exc: Exception) -> str:
    """libsndfile's own reason, without the file name it repeats."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text


def output_problem(path: Path) -> str | None:
    """Why a WAV cannot be written at ``path``, checked before a call is placed; None if it can."""
    if not path.parent.is_dir():
        return f"output directory does not exist: {path.parent}"
    if path.is_dir():
        return f"--output {path} is a directory: name the WAV file to write"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--output {path} cannot be written (permission denied)"
    return None
