"""Raising a phone call's 8 kHz audio to 16 kHz: how late, and how clean (issue 14).

Feeds one second of a tone through each resampler in the Twilio serializer's way,
20 ms (160 samples) at a time, and prints:

* the lag: how far the audio handed on trails the audio fed in, after each frame
  (median and largest): audio held back reaches the VAD that much later;
* the images: the share of the output's power above 4.2 kHz for tones at 1, 3 and
  3.6 kHz, which the phone band does not carry (dB; a clean upsampler leaves none).

Resamplers: pipecat's SoX stream resampler at each quality ("VHQ" is pipecat's
default and was the serializer's) and voxline's
:class:`~voxline.transports.upsampler.StreamUpsampler`.

    .venv/bin/python -m benchmarks.phone_upsampling
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler  # noqa: E402
from pipecat.audio.utils import create_stream_resampler  # noqa: E402

from voxline.transports.upsampler import StreamUpsampler  # noqa: E402

IN_RATE, OUT_RATE, FRAME = 8_000, 16_000, 160
TONES = (1000, 3000, 3600)


async def run(resampler: BaseAudioResampler, freq: float) -> tuple[np.ndarray, list[float]]:
    """The tone's output, and the lag (ms) after each frame."""
    t = np.arange(IN_RATE) / IN_RATE
    tone = (np.sin(2 * np.pi * freq * t) * 10_000).astype(np.int16)
    pieces, lags, fed, out = [], [], 0, 0
    for start in range(0, tone.size, FRAME):
        piece = await resampler.resample(tone[start : start + FRAME].tobytes(), IN_RATE, OUT_RATE)
        pieces.append(piece)
        fed += FRAME
        out += len(piece) // 2
        lags.append((fed / IN_RATE - out / OUT_RATE) * 1000)
    return np.frombuffer(b"".join(pieces), dtype=np.int16).astype(float), lags


def images_db(out: np.ndarray) -> float:
    steady = out[2000 : 2000 + 8192]
    power = np.abs(np.fft.rfft(steady * np.hanning(steady.size))) ** 2
    freqs = np.fft.rfftfreq(steady.size, 1 / OUT_RATE)
    return float(10 * np.log10(power[freqs > 4200].sum() / power.sum() + 1e-20))


async def main() -> None:
    makers = {
        **{
            f"SoX {q}": (lambda q=q: create_stream_resampler(quality=q))
            for q in ("VHQ", "HQ", "MQ", "LQ", "QQ")
        },
        "StreamUpsampler": StreamUpsampler,
    }
    for name, make in makers.items():
        lags: list[float] = []
        images = []
        for freq in TONES:
            out, tone_lags = await run(make(), freq)
            lags += tone_lags
            images.append(f"{freq / 1000:g} kHz {images_db(out):.0f} dB")
        print(
            f"phone_upsampling {name:<16} lag p50 {np.median(lags):5.1f} ms, "
            f"max {max(lags):5.1f} ms | images: {', '.join(images)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
