"""Phone audio up to the pipeline's rate without holding it back.

pipecat's stream resampler (SoX, "VHQ") turns Twilio's 20 ms frames of 8 kHz
audio into 16 kHz in bursts: nothing for four frames, then ~95 ms at once. The
audio handed on trailed the audio fed in by a median 61 ms (up to 110 ms), so
the caller's last word reached the VAD that much later and every turn waited for
it (``benchmarks/phone_upsampling.py``; ``benchmarks/vad_hangover.py`` times the
effect on the pause). SoX's "LQ" still trails by 33 ms (61 ms at most), and its
"QQ", which does not, mirrors 3 kHz speech into the 4-8 kHz band at -11 dB.
Upsampling by a whole factor needs no blocks: each input frame gives its output
frame at once through a polyphase windowed-sinc filter whose delay is half its
length, 3 ms here, with images of in-band tones below -80 dB.
"""

from __future__ import annotations

import numpy as np
from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
from pipecat.audio.utils import create_stream_resampler

TAPS_PER_PHASE = 48
"""Filter length per output phase: a 96-tap filter at 2x, delay (96 - 1) / 2 output samples."""
CUTOFF = 0.95
"""The pass band's edge, as a share of the input's Nyquist frequency (3.8 kHz at 8 kHz)."""
KAISER_BETA = 8.0
"""The window's shape: about 80 dB of stop-band attenuation."""


class StreamUpsampler(BaseAudioResampler):
    """Raises 16-bit mono audio by a whole factor, frame by frame, with no buffering delay.

    Other rate pairs (downsampling, fractional factors) go to pipecat's stream resampler.
    """

    def __init__(self) -> None:
        self._factor = 0
        self._phases: list[np.ndarray] = []
        self._history = np.zeros(0)
        self._fallback: BaseAudioResampler | None = None

    async def resample(self, audio: bytes, in_rate: int, out_rate: int) -> bytes:
        """``audio`` at ``in_rate`` as ``out_rate``; the filter's state carries over calls."""
        if in_rate == out_rate:
            return audio
        if out_rate % in_rate:
            if self._fallback is None:
                self._fallback = create_stream_resampler()
            return await self._fallback.resample(audio, in_rate, out_rate)
        factor = out_rate // in_rate
        if factor != self._factor:
            self._design(factor)
        samples = np.frombuffer(audio, dtype=np.int16).astype(np.float64)
        buffer = np.concatenate([self._history, samples])
        out = np.empty(samples.size * factor)
        for phase, taps in enumerate(self._phases):
            out[phase::factor] = np.convolve(buffer, taps, mode="valid")
        self._history = buffer[buffer.size - (TAPS_PER_PHASE - 1) :]
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16).tobytes()

    def _design(self, factor: int) -> None:
        size = factor * TAPS_PER_PHASE
        # The cut-off in cycles per output sample: the input's Nyquist is 0.5 / factor.
        cutoff = CUTOFF * 0.5 / factor
        centred = np.arange(size) - (size - 1) / 2
        taps = 2 * cutoff * np.sinc(2 * cutoff * centred) * np.kaiser(size, KAISER_BETA)
        taps *= factor / taps.sum()  # zero-stuffing divides the level by the factor
        self._factor = factor
        self._phases = [taps[phase::factor] for phase in range(factor)]
        self._history = np.zeros(TAPS_PER_PHASE - 1)
