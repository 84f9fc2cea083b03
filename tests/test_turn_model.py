"""The shared end-of-turn engine on pipecat's bundled Smart Turn v3.2, with Piper speech.

Phrases were picked by measurement (4 Piper syntheses each, 0-0.5 s of trailing
silence): the complete questions scored 0.977-0.990; "I was wondering if you
could" 0.009-0.016 and "So I was wondering if" 0.008-0.060. Phrases cut after a
noun phrase, such as "Could you move two hundred dollars from my", score
0.97-0.99 in Piper's voice: Piper ends every text with falling intonation, which
the model hears as finished, so they are not used here.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from tests.speech import speech_16k
from voxline.engines.batcher import BatcherClosed
from voxline.engines.turn_model import (
    EndOfTurnEngine,
    TurnDecision,
    TurnModelError,
    fit_window,
    log_mel_features,
)
from voxline.models import ModelNotAvailableError, resolve_piper, resolve_turn_model

COMPLETE = [
    "What is the balance of my checking account?",
    "What time does the branch open on Saturday?",
]
INCOMPLETE = ["I was wondering if you could", "So I was wondering if"]
# What the VAD has heard when the engine is asked: the speech and a little silence.
TAIL_SECS = 0.2


@pytest.fixture(scope="module")
def model_path() -> Path:
    return resolve_turn_model("smart-turn-v3.2")


@pytest.fixture(scope="module")
def engine(model_path: Path):
    engine = EndOfTurnEngine(model_path)
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    tail = np.zeros(int(TAIL_SECS * 16_000), np.float32)
    return {text: np.concatenate([speech_16k(text), tail]) for text in COMPLETE + INCOMPLETE}


def test_bundled_model_resolves_without_importing_pipecat(model_path: Path) -> None:
    assert model_path.name == "smart-turn-v3.2-cpu.onnx"
    assert model_path.is_file()
    with pytest.raises(ModelNotAvailableError, match=r"not found: .*nope\.onnx") as error:
        resolve_turn_model("/tmp/nope.onnx")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", COMPLETE)
async def test_complete_question_is_complete(
    engine: EndOfTurnEngine, speech: dict[str, np.ndarray], text: str
) -> None:
    decision = await engine.decide(speech[text])
    assert decision.complete, decision
    assert decision.probability > 0.8
    assert decision.run_secs > 0 and decision.wait_secs >= 0


@pytest.mark.parametrize("text", INCOMPLETE)
async def test_cut_phrase_is_incomplete(
    engine: EndOfTurnEngine, speech: dict[str, np.ndarray], text: str
) -> None:
    decision = await engine.decide(speech[text])
    assert not decision.complete, decision
    assert decision.probability < 0.2


async def test_threshold_per_call(engine: EndOfTurnEngine, speech: dict[str, np.ndarray]) -> None:
    audio = speech[COMPLETE[0]]
    assert (await engine.decide(audio)).complete
    assert not (await engine.decide(audio, threshold=0.999)).complete
    with pytest.raises(ValueError, match="threshold"):
        await engine.decide(audio, threshold=1.5)


async def test_concurrent_decisions_share_one_session_off_the_loop(
    model_path: Path, speech: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[onnxruntime.InferenceSession] = []
    run_threads: set[str] = set()
    original = onnxruntime.InferenceSession

    class CountingSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

        def run(self, *args, **kwargs):
            run_threads.add(threading.current_thread().name)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", CountingSession)
    engine = EndOfTurnEngine(model_path, max_batch=4, workers=2)
    try:
        texts = (COMPLETE + INCOMPLETE) * 2
        decisions = await asyncio.gather(*(engine.decide(speech[t]) for t in texts))
    finally:
        await engine.close()

    assert len(sessions) == 1
    assert all(isinstance(d, TurnDecision) for d in decisions)
    assert [d.complete for d in decisions] == [t in COMPLETE for t in texts]
    assert sum(r.size for r in engine.batch_records) == len(texts)
    assert max(r.size for r in engine.batch_records) > 1  # decisions were batched
    # Besides the validation run at construction, every run was in a worker thread.
    assert threading.main_thread().name in run_threads
    assert all(name.startswith("turn-model") for name in run_threads - {"MainThread"})
    assert len(run_threads) > 1


async def test_batched_probabilities_match_single(
    model_path: Path, engine: EndOfTurnEngine, speech: dict[str, np.ndarray]
) -> None:
    batched = EndOfTurnEngine(model_path, max_batch=4, max_wait_ms=50)
    try:
        texts = COMPLETE + INCOMPLETE
        together = await asyncio.gather(*(batched.decide(speech[t]) for t in texts))
    finally:
        await batched.close()
    alone = [engine.decide_blocking(speech[t]) for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-4)


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with pytest.raises(TurnModelError) as error:
        EndOfTurnEngine(missing)
    assert str(missing) in str(error.value)
    assert "not found" in str(error.value)
    assert "\n" not in str(error.value)


def test_corrupt_file_is_one_line_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TurnModelError) as error:
        EndOfTurnEngine(corrupt)
    assert str(corrupt) in str(error.value)
    assert "not a loadable ONNX file" in str(error.value)
    assert "\n" not in str(error.value)


def test_other_onnx_model_is_refused() -> None:
    voice = resolve_piper("en_US-joe-medium")
    assert not isinstance(voice, str)
    with pytest.raises(TurnModelError) as error:
        EndOfTurnEngine(voice.model)
    assert str(voice.model) in str(error.value)
    assert "not a Smart Turn v3 model" in str(error.value)
    assert "\n" not in str(error.value)


async def test_bad_audio_fails_only_its_caller(
    engine: EndOfTurnEngine, speech: dict[str, np.ndarray]
) -> None:
    with pytest.raises(ValueError, match="shorter than"):
        await engine.decide(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="shorter than"):
        await engine.decide(np.zeros(1_000, np.float32))
    with pytest.raises(ValueError, match="mono"):
        await engine.decide(np.zeros((2, 16_000), np.float32))
    good = speech[COMPLETE[0]]
    results = await asyncio.gather(
        engine.decide(good), engine.decide(np.zeros(0, np.float32)), return_exceptions=True
    )
    assert isinstance(results[0], TurnDecision) and results[0].complete
    assert isinstance(results[1], ValueError)
    assert (await engine.decide(good)).complete


async def test_closed_engine_refuses(model_path: Path, speech: dict[str, np.ndarray]) -> None:
    engine = EndOfTurnEngine(model_path)
    await engine.aclose()
    with pytest.raises(BatcherClosed):
        await engine.decide(speech[COMPLETE[0]])


def test_window_keeps_last_eight_seconds_padded_at_start() -> None:
    short = np.ones(16_000, np.float32)
    window = fit_window(short)
    assert window.size == 128_000
    assert not window[:-16_000].any() and window[-16_000:].all()
    long = np.arange(200_000, dtype=np.float32)
    assert np.array_equal(fit_window(long), long[-128_000:])


def test_features_match_pipecat() -> None:
    from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features

    rng = np.random.default_rng(7)
    for size in (1_600, 50_000, 128_000, 200_000):
        audio = fit_window(rng.uniform(-1, 1, size).astype(np.float32))
        ours = log_mel_features(audio)
        assert ours.shape == (80, 800) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, compute_whisper_log_mel_features(audio), atol=1e-4)
    quiet = rng.normal(0, 0.01, 30_000).astype(np.float32)
    np.testing.assert_allclose(
        log_mel_features(quiet), compute_whisper_log_mel_features(quiet), atol=1e-4
    )


def test_engines_never_import_pipecat() -> None:
    import subprocess
    import sys

    code = (
        "import sys, voxline.engines.turn_model as m, voxline.models as v; "
        "v.resolve_turn_model('smart-turn-v3.2'); "
        "assert not any(n == 'pipecat' or n.startswith('pipecat.') for n in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
