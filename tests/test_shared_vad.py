"""Silero VAD: every call shares one ONNX model, and each keeps its own state.

Two calls' analyzers are fed different audio, interleaved window by window, and
must score every window exactly as pipecat's own analyzer (one model per call)
scores the same audio alone. Frames are scored on the event loop, not handed to a
thread per call, with the states pipecat's analyzer gives.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import soxr
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams

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


def test_frames_are_scored_on_the_event_loop_with_pipecats_states():
    """No thread per call: each 20 ms frame is scored where the turn-taker awaits it, and
    the VAD's states are those pipecat's analyzer gives the same frames."""
    speech = _speech("Could you tell me my balance?")
    pcm = (np.concatenate([speech, np.zeros(RATE, np.float32)]) * 32767).astype(np.int16)
    frames = [pcm[i : i + 320].tobytes() for i in range(0, pcm.size - 319, 320)]
    params = VADParams(stop_secs=0.2)

    async def states(analyzer: SileroVADAnalyzer) -> tuple[list[str], set[int]]:
        analyzer.set_sample_rate(RATE)
        scored_in: set[int] = set()
        score = analyzer.voice_confidence

        def scoring(window: bytes) -> float:
            scored_in.add(threading.get_ident())
            return score(window)

        analyzer.voice_confidence = scoring  # type: ignore[method-assign]
        seen = [(await analyzer.analyze_audio(frame)).name for frame in frames]
        return seen, scored_in

    async def both():
        loop_thread = threading.get_ident()
        ours, our_threads = await states(SharedSileroVADAnalyzer(params=params))
        theirs, their_threads = await states(SileroVADAnalyzer(params=params))
        return loop_thread, ours, our_threads, theirs, their_threads

    loop_thread, ours, our_threads, theirs, their_threads = asyncio.run(both())
    assert our_threads == {loop_thread}
    assert their_threads and loop_thread not in their_threads  # pipecat's: its own thread
    assert ours == theirs and "SPEAKING" in ours and ours[-1] == "QUIET"
