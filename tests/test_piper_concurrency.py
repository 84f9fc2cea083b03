"""Piper for several calls at once: first chunks first, a bounded queue, the CPU budget.

Real Piper voice (the packaged ``en_US-joe-medium``), no mocks. Timings are read
from the engine's own records (when each piece was queued, started and ended),
so the checks compare intervals, not wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextFrame,
    TTSSpeakFrame,
)
from pipelines import RunningPipeline

from voxline.engines import piper
from voxline.engines.piper import Overloaded, PiperEngine, SynthesisRecord
from voxline.engines.piper_pieces import (
    ONSET_LEVEL,
    split_first,
    split_phonemes,
    trim_leading_silence,
)
from voxline.models import PiperVoiceFiles, resolve_piper
from voxline.processors.tts import SharedPiperTTSService

FIRST_CHUNK = "Sure, let me check that."
LONG_SENTENCE = (
    "Your savings account holds four thousand two hundred dollars and your checking account "
    "holds one thousand and fifty dollars as of this morning, and the transfer you asked about "
    "last Tuesday has been completed without any fee, as the branch manager promised you."
)


@cache
def _voice_files() -> PiperVoiceFiles:
    files = resolve_piper("en_US-joe-medium")
    assert isinstance(files, PiperVoiceFiles)
    return files


def _engine(**options) -> PiperEngine:
    """A voice; first chunks are voiced whole unless a test asks for the busy split."""
    files = _voice_files()
    options.setdefault("busy_first_phonemes", None)
    engine = PiperEngine(files.model, files.config, **options)
    engine.warm_up()
    return engine


async def _speak(engine: PiperEngine, text: str, *, first: bool, label: str) -> float:
    """Synthesize ``text``; seconds from the request to its first audio."""
    asked = time.perf_counter()
    first_audio = None
    async for audio in engine.synthesize(text, first=first, label=label):
        assert audio, "empty audio"
        first_audio = first_audio or time.perf_counter() - asked
    assert first_audio is not None
    return first_audio


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _records(engine: PiperEngine, label: str) -> list[SynthesisRecord]:
    return [record for record in engine.records if record.label == label]


def _overlap(a: SynthesisRecord, b: SynthesisRecord) -> bool:
    return a.started_at < b.ended_at and b.started_at < a.ended_at


async def test_two_calls_first_chunks_are_synthesized_concurrently():
    engine = _engine(workers=2, threads=1)
    try:
        await asyncio.gather(
            _speak(engine, FIRST_CHUNK, first=True, label="call-a"),
            _speak(engine, "Of course, one moment please.", first=True, label="call-b"),
        )
        (a,), (b,) = _records(engine, "call-a"), _records(engine, "call-b")
        assert a.first and b.first
        assert _overlap(a, b), f"intervals do not overlap: {a} {b}"
    finally:
        engine.close()


async def test_long_sentence_does_not_delay_another_calls_first_audio():
    engine = _engine(workers=2, threads=1)
    try:
        long_reply = asyncio.create_task(
            _speak(engine, LONG_SENTENCE + " " + LONG_SENTENCE, first=False, label="call-a")
        )
        await _until(lambda: engine.busy >= 1)  # call A's long sentence is being synthesized
        await _speak(engine, FIRST_CHUNK, first=True, label="call-b")
        await long_reply

        (b,) = _records(engine, "call-b")
        chunk_secs = b.ended_at - b.started_at
        waited = b.started_at - b.queued_at
        assert waited <= chunk_secs, (
            f"call B's first chunk waited {1000 * waited:.0f} ms, more than one chunk's "
            f"synthesis ({1000 * chunk_secs:.0f} ms)"
        )
        assert any(_overlap(a, b) for a in _records(engine, "call-a")), (
            "call A was not synthesizing while call B's first chunk ran: the test proved nothing"
        )
    finally:
        engine.close()


async def test_first_chunk_goes_before_queued_sentences_on_one_worker():
    """With one worker, a first chunk overtakes other calls' queued (not running) pieces."""
    engine = _engine(workers=1, threads=1)
    try:
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-a"))
        await _until(lambda: engine.busy >= 1)
        queued = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-c"))
        await _until(lambda: engine.queued >= 1)
        await _speak(engine, FIRST_CHUNK, first=True, label="call-b")
        await asyncio.gather(busy, queued)
        (b,) = _records(engine, "call-b")
        assert b.started_at < min(c.started_at for c in _records(engine, "call-c"))
        # and it waited for at most the one piece that was already running
        running = [a for a in _records(engine, "call-a") if a.started_at < b.queued_at]
        assert len(running) == 1
        assert b.started_at - b.queued_at <= running[0].ended_at - running[0].started_at + 0.05
    finally:
        engine.close()


async def _speak_by(engine: PiperEngine, text: str, label: str, needed_in: float | None) -> None:
    """A later chunk whose caller runs out of audio ``needed_in`` seconds from now."""
    needed_at = None if needed_in is None else time.monotonic() + needed_in
    async for audio in engine.synthesize(text, label=label, needed_at=needed_at):
        assert audio


async def test_the_later_piece_needed_soonest_goes_first():
    """Queued later pieces go by when their callers run out of audio, not by arrival;
    a request that gave no time goes after those that did."""
    engine = _engine(workers=1, threads=1)
    try:
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-a"))
        await _until(lambda: engine.busy >= 1)
        queued = [
            asyncio.create_task(_speak_by(engine, FIRST_CHUNK, "no-time", None)),
            asyncio.create_task(_speak_by(engine, FIRST_CHUNK, "in-20s", 20.0)),
            asyncio.create_task(_speak_by(engine, FIRST_CHUNK, "in-10s", 10.0)),
        ]
        await _until(lambda: engine.queued >= 3)
        await asyncio.gather(busy, *queued)
        starts = {label: _records(engine, label)[0].started_at for label in ("in-10s", "in-20s")}
        assert starts["in-10s"] < starts["in-20s"] < _records(engine, "no-time")[0].started_at
    finally:
        engine.close()


@pytest.mark.parametrize("urgent_secs", [0.5, None])
async def test_an_urgent_later_piece_may_take_the_worker_kept_for_first_chunks(urgent_secs):
    """Two workers, one kept for first chunks: a later piece whose caller runs out of
    audio in 0.3 s runs beside another call's long sentence; one needed in 30 s waits
    for it, and so does one already late (its stall is heard whatever runs) and every
    later piece when ``urgent_secs`` is None."""
    engine = _engine(workers=2, threads=1, urgent_secs=urgent_secs)
    try:
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-a"))
        await _until(lambda: engine.busy >= 1)
        late = asyncio.create_task(_speak_by(engine, FIRST_CHUNK, "late", -1.0))
        await _until(lambda: engine.queued >= 1)
        await asyncio.sleep(0.05)  # a worker looked at it, and left it queued
        urgent = asyncio.create_task(_speak_by(engine, FIRST_CHUNK, "urgent", 0.3))
        relaxed = asyncio.create_task(_speak_by(engine, FIRST_CHUNK, "relaxed", 30.0))
        await asyncio.gather(busy, late, urgent, relaxed)
        running = _records(engine, "call-a")[0]  # the piece running when the others came
        (fast,), (slow,) = _records(engine, "urgent"), _records(engine, "relaxed")
        assert slow.started_at >= running.ended_at
        assert _records(engine, "late")[0].started_at >= running.ended_at
        if urgent_secs is None:
            assert fast.started_at >= running.ended_at
        else:
            assert _overlap(fast, running), (fast, running)
    finally:
        engine.close()


async def test_tts_service_tells_the_engine_when_each_later_chunk_is_needed():
    """The second chunk of a reply is needed when the first chunk's audio has played,
    counted from the first chunk's first frame."""
    engine = _engine(workers=2, threads=1)
    asked: list[tuple[str, float | None, float]] = []
    synthesize = engine.synthesize

    def spy(text: str, **options):
        asked.append((text, options.get("needed_at"), time.monotonic()))
        return synthesize(text, **options)

    engine.synthesize = spy  # type: ignore[method-assign]
    tts = SharedPiperTTSService(engine=engine)
    try:
        async with RunningPipeline([tts]) as run:
            await run.queue(
                LLMFullResponseStartFrame(),
                TextFrame(FIRST_CHUNK),
                TextFrame("Your balance is forty two dollars."),
                LLMFullResponseEndFrame(),
            )
        (first_text, first_needed, first_asked), (_, later_needed, later_asked) = asked
        assert first_text == FIRST_CHUNK and first_needed is None
        (record,) = [r for r in engine.records if r.label == tts.name and r.request == 0]
        assert later_needed is not None
        # The first chunk's audio, from its first frame (after it was asked for, before
        # the second chunk was), then its length (less the leading silence trimmed).
        assert first_asked + record.audio_secs - 0.1 < later_needed
        assert later_needed < later_asked + record.audio_secs + 0.05
    finally:
        engine.close()


async def test_old_fifo_engine_makes_a_first_chunk_wait_for_long_sentences():
    """The behaviour before issue 15, kept as an option: the same scenario waits."""
    engine = _engine(workers=1, threads=1, prioritize_first=False, max_phonemes=None)
    try:
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-a"))
        await _until(lambda: engine.busy >= 1)
        queued = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-c"))
        await _until(lambda: engine.queued >= 1)
        await _speak(engine, FIRST_CHUNK, first=True, label="call-b")
        await asyncio.gather(busy, queued)
        (b,) = _records(engine, "call-b")
        (c,) = _records(engine, "call-c")
        assert c.ended_at <= b.started_at, "FIFO: the first chunk waited for call C's sentence"
    finally:
        engine.close()


async def test_full_queue_refuses_with_overload_error():
    engine = _engine(workers=1, threads=1, max_queue=1)
    try:
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="a"))
        await _until(lambda: engine.busy >= 1)
        queued = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="b"))
        await _until(lambda: engine.queued >= 1)
        refused_at = time.perf_counter()
        with pytest.raises(Overloaded, match=r"piper is overloaded: 1 syntheses already queued"):
            await _speak(engine, FIRST_CHUNK, first=True, label="c")
        assert time.perf_counter() - refused_at < 0.05, "refused only after waiting"
        await asyncio.gather(busy, queued)
        assert not _records(engine, "c")
        # once the queue drained, requests are accepted again
        await _speak(engine, FIRST_CHUNK, first=True, label="d")
    finally:
        engine.close()


async def test_tts_service_marks_the_first_chunk_of_each_reply_and_greeting():
    engine = _engine(workers=2, threads=1)
    tts = SharedPiperTTSService(engine=engine)
    try:
        async with RunningPipeline([tts]) as run:
            await run.queue(TTSSpeakFrame("Hello, you have reached the bank."))
            await run.queue(
                LLMFullResponseStartFrame(),
                TextFrame("Sure, let me check."),
                TextFrame("Your balance is forty two dollars."),
                TextFrame("Anything else?"),
                LLMFullResponseEndFrame(),
            )
        records = sorted(_records(engine, tts.name), key=lambda record: record.request)
        assert [record.first for record in records] == [True, True, False, False]
    finally:
        engine.close()


def test_long_sentences_are_cut_at_clause_or_word_boundaries():
    engine = _engine(workers=1, max_phonemes=60)
    try:
        (phonemes,) = engine._voice.phonemize(LONG_SENTENCE)
        pieces = split_phonemes(phonemes, 60)
        assert len(pieces) > 2
        assert all(0 < len(piece) <= 60 for piece in pieces)
        assert all(piece[0] != " " and piece[-1] != " " for piece in pieces)
        assert " ".join("".join(piece) for piece in pieces) == "".join(phonemes)
        assert split_phonemes(phonemes, None) == [phonemes]
    finally:
        engine.close()


async def test_a_first_chunk_starts_with_its_first_sound_not_with_silence():
    """Piper begins "Your balance is" with ~45 ms of silence: a reply's first chunk is
    trimmed to its onset (a margin kept); a later chunk keeps its own pause."""
    engine = _engine()
    try:
        rate = engine.sample_rate
        text = "Your balance is"
        first = [b"".join([p async for p in engine.synthesize(text, first=True)]) for _ in "ab"]
        later = [b"".join([p async for p in engine.synthesize(text)]) for _ in "ab"]
    finally:
        engine.close()

    def onset_ms(pcm: bytes) -> float:
        samples = np.abs(np.frombuffer(pcm, dtype=np.int16).astype(np.int32))
        return float(np.flatnonzero(samples > ONSET_LEVEL * 32767)[0]) / rate * 1000

    firsts, laters = [onset_ms(pcm) for pcm in first], [onset_ms(pcm) for pcm in later]
    print(f"\nfirst sound at {firsts} ms in first chunks, {laters} ms in later ones")
    assert all(9 <= ms <= 11 for ms in firsts), firsts  # the 10 ms margin
    assert all(ms >= 20 for ms in laters), laters


def test_silence_alone_is_not_trimmed_away():
    silence = np.zeros(1600, dtype=np.int16).tobytes()
    assert trim_leading_silence(silence, 16000) == silence
    onset = np.concatenate([np.zeros(800), np.full(800, 3000)]).astype(np.int16)
    trimmed = np.frombuffer(trim_leading_silence(onset.tobytes(), 16000), dtype=np.int16)
    assert trimmed.size == 800 + 160  # 10 ms of margin before the onset


def test_a_negative_urgency_is_refused():
    from pydantic import ValidationError

    from voxline.engine_config import PiperConfig

    files = _voice_files()
    with pytest.raises(ValueError, match="urgent_secs must be >= 0 or None"):
        PiperEngine(files.model, files.config, urgent_secs=-0.1)
    with pytest.raises(ValidationError, match="urgent_ms"):
        PiperConfig(urgent_ms=-1)
    assert PiperConfig().urgent_ms == 500 and PiperConfig(urgent_ms=None).urgent_ms is None


@asynccontextmanager
async def _busy_voice_logging(level: str) -> AsyncIterator[tuple[PiperEngine, list[str]]]:
    """One worker, busy with call-a's long sentence, and the log's lines at ``level``.

    The voice is closed, and the lines stop coming, when the block ends.
    """
    lines: list[str] = []
    sink = logger.add(lines.append, level=level, format="{message}")
    engine = _engine(workers=1, threads=1)
    try:
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-a"))
        await _until(lambda: engine.busy >= 1)
        yield engine, lines
        await busy
    finally:
        engine.close()
        logger.remove(sink)


async def test_a_first_chunk_that_waited_is_logged_with_the_queue_behind_it(monkeypatch):
    """An operator sees which call's first audio came late, and whether it waited or ran long."""
    monkeypatch.setattr(piper, "SLOW_FIRST_SECS", 0.0)
    async with _busy_voice_logging("WARNING") as (engine, lines):
        await _speak(engine, FIRST_CHUNK, first=True, label="call-b")
    late = [line for line in lines if "first audio of call-b" in line]
    assert len(late) == 1, lines
    assert "queued" in late[0] and "running" in late[0]
    # Later pieces are not first audio: only call-b's line is logged.
    assert not any("call-a" in line for line in lines), lines


async def test_a_later_piece_ready_after_its_caller_ran_out_is_logged():
    """At DEBUG, each piece heard late says whether its text came late or it waited."""
    async with _busy_voice_logging("DEBUG") as (engine, lines):
        # call-b's audio ran out 0.3 s ago; call-c's is needed in a minute.
        await asyncio.gather(
            _speak_by(engine, FIRST_CHUNK, "call-b", needed_in=-0.3),
            _speak_by(engine, FIRST_CHUNK, "call-c", needed_in=60.0),
        )
    late = [line for line in lines if "ran out of audio" in line]
    assert len(late) == 1 and "call-b" in late[0], lines
    ready_late = float(late[0].split(" ready ")[1].split(" s ")[0])
    text_late = float(late[0].split("(text ")[1].split(" s ")[0])
    assert ready_late > 0.3 and 0.29 <= text_late <= 0.4, late[0]
    assert "queued" in late[0] and "phonemes in" in late[0]


async def test_a_busy_voice_says_a_first_chunks_first_words_alone():
    """With pieces waiting, the first words go first and free the worker sooner; on an
    idle voice the first chunk is voiced whole."""
    engine = _engine(workers=1, threads=1, busy_first_phonemes=16)
    text = "I'm sorry for any inconvenience, let me check that."
    try:
        await _speak(engine, text, first=True, label="alone")
        busy = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-a"))
        await _until(lambda: engine.busy >= 1)
        waiting = asyncio.create_task(_speak(engine, LONG_SENTENCE, first=False, label="call-c"))
        await _until(lambda: engine.queued >= 1)
        first = asyncio.create_task(_speak(engine, text, first=True, label="call-b"))
        await asyncio.gather(busy, waiting, first)
    finally:
        engine.close()
    (whole,) = _records(engine, "alone")
    head, rest = _records(engine, "call-b")
    assert head.phonemes <= 16 < whole.phonemes
    assert head.phonemes + rest.phonemes + 1 == whole.phonemes  # the space between
    # The first words came before the queued sentence; the rest after it.
    (queued,) = [r for r in _records(engine, "call-c") if r.piece == 0]
    assert head.started_at < queued.started_at
    assert head.ended_at - head.started_at < whole.ended_at - whole.started_at


def test_the_first_words_end_at_a_clause_or_a_word():
    phonemes = list("aɪm sˈɑːɹi, fɔːɹ ˈɛni ɪnkənvˈiːniəns.")
    head, rest = split_first(phonemes, 16)
    assert "".join(head) == "aɪm sˈɑːɹi,"
    assert "".join(rest) == "fɔːɹ ˈɛni ɪnkənvˈiːniəns."
    assert split_first(list("ʃˈʊɹ."), 16) == [list("ʃˈʊɹ.")]
