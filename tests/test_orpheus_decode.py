"""Orpheus token protocol and the sliding-window SNAC decode, with a seeded random SNAC
(noise blocks off, so two decodes of the same codes are equal)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voxline.engines.orpheus import (
    CODES_PER_FRAME,
    SAMPLES_PER_FRAME,
    WINDOW_CODES,
    OrpheusFrames,
    frames_to_codebooks,
    token_to_code,
)
from voxline.engines.snac import SNACDecoder, load_snac


@pytest.fixture(scope="module")
def decoder():
    return SNACDecoder(load_snac("random:7"), max_batch=16, max_wait_ms=20)


def tokens_for(codes: list[int]) -> list[int]:
    """The custom-token numbers Orpheus would emit for ``codes``."""
    return [code + 10 + (i % CODES_PER_FRAME) * 4096 for i, code in enumerate(codes)]


def random_codes(frames: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 4096, frames * CODES_PER_FRAME).tolist()


def test_token_to_code_edges():
    assert token_to_code(10, 0) == 0  # code 0 is valid (the reference's `> 0` drops it)
    assert token_to_code(10 + 4095, 0) == 4095
    assert token_to_code(10 + 4096, 0) is None  # 4096 is out of range
    assert token_to_code(9, 0) is None
    assert token_to_code(10 + 3 * 4096 + 5, 3) == 5
    assert token_to_code(10 + 3 * 4096 + 5, 4) is None


def test_codebooks_follow_the_frame_layout():
    codes = np.arange(14)
    first, second, third = frames_to_codebooks(codes)
    assert first.tolist() == [0, 7]
    assert second.tolist() == [1, 4, 8, 11]
    assert third.tolist() == [2, 3, 5, 6, 9, 10, 12, 13]


def stream(decoder: SNACDecoder, codes: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """Decode as a stream; return the slices and the token count at which each came."""
    frames = OrpheusFrames()
    slices: list[np.ndarray] = []
    at: list[int] = []
    for count, number in enumerate(tokens_for(codes), start=1):
        for window in frames.push(number):
            slices.append(decoder.decode_blocking(window.codes)[window.start : window.stop])
            at.append(count)
    for window in frames.finish():
        slices.append(decoder.decode_blocking(window.codes)[window.start : window.stop])
        at.append(len(codes))
    return slices, at


def test_streamed_slices_match_their_windows_and_the_whole_decode(decoder):
    codes = random_codes(12, seed=1)
    slices, at = stream(decoder, codes)
    assert at[0] == WINDOW_CODES, "first audio must come exactly at token 28"
    middle = slices[1:-1]
    for k, piece in enumerate(middle, start=5):  # window ending at frame k
        window = np.asarray(codes[(k - 4) * 7 : k * 7])
        alone = decoder.decode_blocking(window)[SAMPLES_PER_FRAME : 2 * SAMPLES_PER_FRAME]
        np.testing.assert_allclose(piece, alone, atol=1e-5)
    audio = np.concatenate(slices)
    assert audio.size == 12 * SAMPLES_PER_FRAME, "the end-of-stream flush must emit every frame"
    whole = decoder.decode_blocking(np.asarray(codes))
    error = np.sqrt(np.mean((audio - whole) ** 2)) / np.sqrt(np.mean(whole**2))
    print(f"\nrelative RMS error of the stream vs the whole decode: {error:.2e}")
    assert error < 1e-2


def test_short_and_invalid_streams(decoder):
    frames = OrpheusFrames()
    numbers = tokens_for(random_codes(2, seed=3))
    numbers.insert(3, 10 + 4096 * 9)  # out of range for its position: rejected
    for number in [*numbers, 2, *tokens_for([1] * 7)]:  # audio after end-of-speech is ignored
        assert frames.push(number) == []
    assert frames.ended and frames.rejected == 1
    [rest] = frames.finish()
    audio = decoder.decode_blocking(rest.codes)[rest.start : rest.stop]
    assert audio.size == 2 * SAMPLES_PER_FRAME
    assert OrpheusFrames().finish() == []
    with pytest.raises(ValueError, match="whole frames"):
        decoder.decode_blocking(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"0\.\.4095"):
        decoder.decode_blocking(np.full(7, 4096))


def test_eight_concurrent_streams_through_the_batcher_equal_eight_alone(decoder):
    windows = [np.asarray(random_codes(4, seed=10 + i)) for i in range(8)]
    alone = [decoder.decode_blocking(window) for window in windows]

    async def together():
        results = await asyncio.gather(*(decoder.decode(window) for window in windows))
        await decoder.close()
        return results

    batched = asyncio.run(together())
    assert decoder.batch_records[-1].size == 8
    for one, many in zip(alone, batched, strict=True):
        np.testing.assert_allclose(many, one, atol=1e-5)


def test_snac_from_a_hub_is_refused_clearly_when_downloads_are_off(monkeypatch):
    from voxline.models import ModelNotAvailableError

    monkeypatch.setenv("VOXLINE_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"set engines\.snac\.model to a directory"):
        load_snac("hubertsiuzdak/snac_24khz")
