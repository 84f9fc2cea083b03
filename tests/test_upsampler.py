"""The Twilio serializer's upsampler: every 20 ms frame out at once, and clean."""

from __future__ import annotations

import audioop
import base64
import json

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame

from voxline.transports.twilio import TwilioMediaSerializer, TwilioStream
from voxline.transports.upsampler import StreamUpsampler

SID = "MZ" + "0" * 32


def sine(freq: float, secs: float = 1.0, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(secs * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 10_000).astype(np.int16)


async def upsample_frames(samples: np.ndarray, frame: int = 160) -> list[bytes]:
    upsampler = StreamUpsampler()
    return [
        await upsampler.resample(samples[i : i + frame].tobytes(), 8000, 16000)
        for i in range(0, samples.size, frame)
    ]


async def test_each_phone_frame_comes_out_whole_and_at_once():
    """pipecat's SoX stream resampler gave nothing for four frames, then ~95 ms at once."""
    stream = TwilioStream(stream_sid=SID, call_sid="CA1")
    serializer = TwilioMediaSerializer(stream)
    tone = sine(440, 0.2)
    for start in range(0, tone.size, 160):
        payload = base64.b64encode(audioop.lin2ulaw(tone[start : start + 160].tobytes(), 2))
        media = {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload.decode()}
        message = json.dumps({"event": "media", "streamSid": SID, "media": media})
        frame = await serializer.deserialize(message)
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.sample_rate == 16000 and len(frame.audio) == 640


async def test_an_impulse_comes_out_within_a_few_milliseconds():
    impulse = np.zeros(160, dtype=np.int16)
    impulse[0] = 10_000
    out = np.frombuffer((await upsample_frames(impulse))[0], dtype=np.int16)
    assert np.argmax(np.abs(out)) / 16 < 4  # ms


@pytest.mark.parametrize("freq", [300, 1000, 3000, 3400])
async def test_speech_band_tones_keep_their_level_and_leave_no_images(freq):
    tone = sine(freq)
    out = np.frombuffer(b"".join(await upsample_frames(tone)), dtype=np.int16).astype(float)
    steady = out[2000 : 2000 + 8192]
    power = np.abs(np.fft.rfft(steady * np.hanning(steady.size))) ** 2
    freqs = np.fft.rfftfreq(steady.size, 1 / 16000)
    images_db = 10 * np.log10(power[freqs > 4200].sum() / power.sum())
    assert images_db < -70, images_db
    gain_db = 20 * np.log10(np.sqrt(np.mean(steady**2)) / np.sqrt(np.mean(tone.astype(float) ** 2)))
    assert abs(gain_db) < 0.1, gain_db


async def test_frames_join_without_a_seam():
    """The filter's state carries over frames: cut in 20 ms or in one piece, the same audio."""
    tone = sine(1000, 0.5)
    framed = b"".join(await upsample_frames(tone))
    whole = await StreamUpsampler().resample(tone.tobytes(), 8000, 16000)
    assert framed == whole


async def test_rates_that_are_no_whole_multiple_go_to_pipecats_resampler():
    upsampler = StreamUpsampler()
    assert await upsampler.resample(b"\x01\x00" * 160, 16000, 16000) == b"\x01\x00" * 160
    out = b"".join([await upsampler.resample(sine(440).tobytes(), 8000, 22050) for _ in range(2)])
    assert len(out) > 0
