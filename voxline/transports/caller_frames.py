"""The near end of a phone stream: the simulated caller's words as Twilio carries them.

A Twilio media stream carries the caller as 20 ms frames of 8 kHz µ-law, one
``media`` message each. :func:`mulaw_frames` cuts the caller's audio into those
frames, marking which are voiced, so that the simulated caller's media stream
(:mod:`voxline.transports.twilio_caller_stream`) can send them in real time and time
its turns from its last voiced frame; :mod:`voxline.transports.caller_ear` is the far
end, what the caller hears.
"""

from __future__ import annotations

import audioop

import numpy as np
import soxr

from voxline.transports.levels import is_voiced

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_SECS = FRAME_SAMPLES / RATE


def mulaw_frames(audio: np.ndarray, rate: int) -> list[tuple[bytes, bool]]:
    """20 ms µ-law frames of the caller's words, each with whether it is voiced."""
    if not audio.size:
        return []
    samples = audio if rate == RATE else soxr.resample(audio, rate, RATE)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    pad = (-pcm.size) % FRAME_SAMPLES
    pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    frames = (pcm[i : i + FRAME_SAMPLES] for i in range(0, pcm.size, FRAME_SAMPLES))
    return [(audioop.lin2ulaw(frame.tobytes(), 2), is_voiced(frame)) for frame in frames]
