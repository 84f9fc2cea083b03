"""Resample one utterance's audio as it streams, without losing its tail.

pipecat's stream resampler clears its state after 0.2 s without input, which drops
the samples it still holds (its filter delay) whenever TTS audio comes in pieces
with pauses between them: a few milliseconds lost at every piece, the end of every
utterance cut. A resampler per utterance, flushed at its end, keeps every sample.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import soxr


async def resample_utterance(
    pieces: AsyncIterator[np.ndarray], in_rate: int, out_rate: int
) -> AsyncIterator[bytes]:
    """16-bit PCM at ``out_rate`` for float32 pieces at ``in_rate``, flushed at the end."""
    if in_rate == out_rate:
        async for piece in pieces:
            yield _pcm16(piece)
        return
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
    async for piece in pieces:
        out = stream.resample_chunk(np.ascontiguousarray(piece, dtype=np.float32))
        if out.size:
            yield _pcm16(out)
    tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
    if tail.size:
        yield _pcm16(tail)


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
