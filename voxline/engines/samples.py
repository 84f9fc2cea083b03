"""Checks on the audio handed to an engine: mono float samples, finite."""

from __future__ import annotations

import math

import numpy as np


def validate_audio(audio: np.ndarray) -> np.ndarray:
    """Check an utterance and return it as contiguous float32.

    Raises:
        ValueError: for a non-array, a multi-dimensional array, a non-float dtype
            or non-finite samples.
    """
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if samples.size and not math.isfinite(float(np.sum(samples))):
        raise ValueError("audio contains NaN or infinite samples")
    return samples
