"""Fixed lines (a persona's greeting and phrases) are kept once spoken whole and replayed.

Real Piper voice (the packaged ``en_US-joe-medium``) behind the real TTS service. The
checks read the engine's own records: a line played from memory adds none, and needs no
free worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from pipecat.frames.frames import Frame, InterruptionFrame, TTSAudioRawFrame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipelines import RunningPipeline
from test_piper_concurrency import LONG_SENTENCE, _engine, _records, _until

from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.engines.lines import LineMemory
from voxline.personas.schema import Persona
from voxline.processors.tts import SharedPiperTTSService

GREETING = "Trattoria Sole, good evening. Would you like to book a table?"
GOODBYE = "Thank you for calling. Goodbye."


class Audio(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.pcm = bytearray()
        self.started = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.pcm.extend(frame.audio)
            self.started.set()
        await self.push_frame(frame, direction)


async def _call(engine, lines: LineMemory, *texts: str) -> tuple[SharedPiperTTSService, Audio]:
    """One call's TTS speaking ``texts``; returns when the pipeline has ended."""
    tts, audio = SharedPiperTTSService(engine=engine, lines=lines), Audio()
    async with RunningPipeline([tts, audio]) as run:
        for text in texts:
            await run.queue(TTSSpeakFrame(text))
    return tts, audio


async def _play(engine, text: str) -> None:
    async for _ in engine.synthesize(text, label="busy"):
        pass


async def test_a_greeting_spoken_whole_is_replayed_by_the_next_call_without_synthesis():
    engine = _engine(workers=2, threads=1, reserve_first=False)
    lines = LineMemory()
    lines.want([GREETING, f"  {GOODBYE}\n", ""])
    try:
        first, heard_first = await _call(engine, lines, GREETING)
        assert len(_records(engine, first.name)) == 2  # its two sentences, synthesized
        assert GREETING in lines and len(lines) == 1 and lines.played == 0

        # Every worker busy with other calls' long sentences, one more queued: a
        # synthesized greeting would wait for one of them to end.
        busy = [asyncio.create_task(_play(engine, LONG_SENTENCE)) for _ in range(3)]
        await _until(lambda: engine.busy == 2 and engine.queued >= 1)
        finished = len(engine.records)
        second, heard_second = await _call(engine, lines, f" {GREETING} ")
        assert len(engine.records) == finished, "the remembered greeting waited for a worker"
        await asyncio.gather(*busy)

        assert not _records(engine, second.name) and lines.played == 1
        assert len(heard_second.pcm) / 2 / 16_000 > 2.0  # both sentences, at 16 kHz
        assert abs(len(heard_second.pcm) - len(heard_first.pcm)) <= 2 * 160, "not the same take"

        # Any other text is synthesized, and a text nobody wants is not kept.
        third, _ = await _call(engine, lines, "Would you like to book a table?", GOODBYE)
        assert len(_records(engine, third.name)) == 3 and len(lines) == 2  # 1 + 2 sentences
        assert "Would you like to book a table?" not in lines
    finally:
        engine.close()


async def test_a_greeting_cut_by_a_barge_in_is_not_kept():
    engine = _engine(workers=1, threads=1)
    lines = LineMemory()
    line = f"{GREETING} {LONG_SENTENCE}"
    lines.want([line])
    tts, audio = SharedPiperTTSService(engine=engine, lines=lines), Audio()
    try:
        async with RunningPipeline([tts, audio]) as run:
            await run.queue(TTSSpeakFrame(line))
            await asyncio.wait_for(audio.started.wait(), 30)
            await run.queue(InterruptionFrame())
        assert line not in lines and lines.wants(line)
    finally:
        engine.close()


async def test_memory_is_bounded():
    engine = _engine(workers=1, threads=1)
    lines = LineMemory(max_lines=1)
    lines.want(["One.", "Two."])
    try:
        await _call(engine, lines, "One.", "Two.", "Two.")
        assert len(lines) == 1 and "One." in lines and lines.played == 0
    finally:
        engine.close()


def test_a_personas_fixed_lines_are_its_greeting_and_phrases():
    persona = Persona(
        name="desk",
        prompt="Answer briefly.",
        greeting="Hello, parcel desk.",
        phrases={"filler": "One moment.", "goodbye": "Bye now."},
    )
    lines = persona.fixed_lines
    assert lines[0] == "Hello, parcel desk."
    assert {"One moment.", "Bye now.", persona.phrases.apology, persona.phrases.idle} <= set(lines)
    without_greeting = Persona(name="quiet", prompt="Hi.").fixed_lines
    assert without_greeting and "Hello, parcel desk." not in without_greeting


async def _spoken(lines: LineMemory, text: str) -> None:
    """``text`` spoken whole through ``lines`` (a second of silence as its audio)."""

    async def speak() -> AsyncIterator[np.ndarray]:
        yield np.zeros(22_050, np.float32)

    async for _ in lines.play(text, speak):
        pass


async def test_two_orpheus_servers_with_one_voice_name_are_one_metric_label():
    def orpheus(name: str, base_url: str) -> Persona:
        tts = {"engine": "orpheus", "voice": "tara", "base_url": base_url}
        return Persona(name=name, prompt="p", greeting=GREETING, tts=tts)

    runtime = Runtime(ServerConfig())
    first = runtime.lines(orpheus("a", "http://127.0.0.1:9001"))
    second = runtime.lines(orpheus("b", "http://127.0.0.1:9002"))
    assert first is not None and second is not None and first is not second
    for lines in (first, second):
        lines.want([GREETING])
        await _spoken(lines, GREETING)  # kept
    for lines in (first, second, second):
        await _spoken(lines, GREETING)  # played from memory
    assert runtime.remembered_lines == {"tara": (2, 3)}


@pytest.mark.parametrize(
    ("piper", "urgent_secs", "before_first"),
    [({}, 0.5, True), ({"urgent_ms": 300, "urgent_before_first": False}, 0.3, False)],
)
async def test_the_runtime_gives_the_voice_its_urgency_settings(piper, urgent_secs, before_first):
    """``engines.piper.urgent_ms`` and ``urgent_before_first`` reach the shared voice."""
    runtime = Runtime(ServerConfig.model_validate({"engines": {"piper": piper}}))
    persona = Persona(name="p", prompt="p", greeting=GREETING)
    try:
        await asyncio.to_thread(runtime._load_local_engines, persona)
        (engine,) = runtime.piper_engines.values()
        assert engine.urgent_secs == pytest.approx(urgent_secs)
        assert engine.urgent_before_first is before_first
    finally:
        await runtime.close()
