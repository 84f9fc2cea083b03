"""Silero VAD: every call shares one ONNX model, and each keeps its own state.

Two calls' analyzers are fed different audio, interleaved window by window, and
must score every window exactly as pipecat's own analyzer (one model per call)
scores the same audio alone.
"""

from __future__ import annotations

import numpy as np
import soxr
from pipecat.audio.vad.silero import SileroVADAnalyzer

from tests.speech import caller_voice
from voxline.processors.vad import SharedSileroVADAnalyzer

RATE = 16_000
WINDOW = 512


def _windows(audio: np.ndarray) -> list[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return [pcm[i : i + WINDOW].tobytes() for i in range(0, pcm.size - WINDOW + 1, WINDOW)]


def _speech(text: str) -> np.ndarray:
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(text), np.int16).astype(np.float32) / 32768
    return soxr.resample(pcm, voice.sample_rate, RATE).astype(np.float32)


def _scores(analyzer: SileroVADAnalyzer, windows: list[bytes]) -> list[float]:
    analyzer.set_sample_rate(RATE)
    return [float(np.asarray(analyzer.voice_confidence(window)).item()) for window in windows]


def test_calls_share_one_model_and_keep_their_own_state():
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(RATE) * 0.02).astype(np.float32)
    first = _windows(np.concatenate([_speech("What time do you open tomorrow?"), noise, noise]))
    second = _windows(np.concatenate([noise, _speech("My card is lost."), noise]))
    count = min(len(first), len(second))
    first, second = first[:count], second[:count]

    alone_first = _scores(SileroVADAnalyzer(), first)
    alone_second = _scores(SileroVADAnalyzer(), second)

    a, b = SharedSileroVADAnalyzer(), SharedSileroVADAnalyzer()
    assert a._model.session is b._model.session  # one model for the process
    assert a._model is not b._model
    a.set_sample_rate(RATE)
    b.set_sample_rate(RATE)
    together_first, together_second = [], []
    for one, two in zip(first, second, strict=True):
        together_first.append(float(np.asarray(a.voice_confidence(one)).item()))
        together_second.append(float(np.asarray(b.voice_confidence(two)).item()))

    assert max(alone_first) > 0.9 and max(alone_second) > 0.9  # both hold speech
    np.testing.assert_allclose(together_first, alone_first, rtol=0, atol=1e-6)
    np.testing.assert_allclose(together_second, alone_second, rtol=0, atol=1e-6)
