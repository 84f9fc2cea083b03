"""Piper speaks the first clause while the LLM is still writing the sentence."""

from __future__ import annotations

import asyncio
import time

from pipecat.frames.frames import (
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipelines import RunningPipeline
from speech import caller_voice

from voxline.processors.chunker import ChunkerProcessor
from voxline.processors.tts import SharedPiperTTSService

REPLY = (
    "Sure, I can check that, your savings account holds four thousand two hundred dollars "
    "and your checking account holds one thousand and fifty dollars as of this morning."
)


class FirstAudio(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.first: float | None = None
        self.samples = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.first = self.first or time.perf_counter()
            self.samples += len(frame.audio) // 2
        await self.push_frame(frame, direction)


async def test_first_clause_is_heard_before_the_sentence_is_written():
    voice = caller_voice()
    started = time.perf_counter()
    voice.synthesize_all(REPLY)
    whole_sentence_secs = time.perf_counter() - started

    probe = FirstAudio()
    tts = SharedPiperTTSService(engine=voice)
    async with RunningPipeline([ChunkerProcessor(), tts, probe]) as run:
        await run.queue(LLMFullResponseStartFrame())
        first_token = time.perf_counter()
        for token in [piece for piece in REPLY.replace(" ", "\0 ").split("\0") if piece]:
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(0.03)  # the LLM's token rate
        last_token = time.perf_counter()
        await run.queue(LLMFullResponseEndFrame())

    assert probe.first is not None, "no audio"
    print(
        f"\nfirst audio {1000 * (probe.first - first_token):.0f} ms after the first token; "
        f"the LLM wrote for {1000 * (last_token - first_token):.0f} ms; the whole sentence "
        f"takes {1000 * whole_sentence_secs:.0f} ms to synthesize"
    )
    assert probe.first < last_token, "the first clause waited for the whole sentence"
    spoken_secs = probe.samples / 16_000
    assert spoken_secs > 5, f"only {spoken_secs:.1f} s of the reply were spoken"
