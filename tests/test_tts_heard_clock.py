"""A held speculative reply's audio counts toward its caller's ear from the commit.

The shared Piper engine serves later chunks by when their caller runs out of audio
(``needed_at``). A speculative reply's audio waits at the gate until the caller's
turn is committed; counted from when it was made, its later chunks would look due
(or already late) before the caller hears a word, and go ahead of chunks that callers
who are listening now need.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.utils.text.base_text_aggregator import TextType
from pipelines import RunningPipeline
from speech import caller_voice

from voxline.engines.piper import PiperEngine
from voxline.processors.frames import ReplySpeculationFrame
from voxline.processors.tts import SharedPiperTTSService

CHUNKS = (
    "Sure, I can check that.",
    "Your savings account holds four thousand dollars.",
    "Anything else?",
)
COMMIT_DELAY_SECS = 2.0
"""How long the caller's turn stays open after the reply's first chunk is made."""


@dataclass
class Request:
    text: str
    asked_at: float
    needed_at: float | None


class RecordingVoice:
    """The Piper engine, noting when each chunk was asked for, when it is needed, and
    how much audio the chunks made."""

    def __init__(self, engine: PiperEngine):
        self._engine = engine
        self.model_path = engine.model_path
        self.sample_rate = engine.sample_rate
        self.requests: list[Request] = []
        self.made_secs = 0.0
        self.finished = 0
        self.changed = asyncio.Condition()

    async def synthesize(self, text: str, **kwargs):
        async with self.changed:
            self.requests.append(Request(text, time.monotonic(), kwargs.get("needed_at")))
            self.changed.notify_all()
        async for piece in self._engine.synthesize(text, **kwargs):
            self.made_secs += len(piece) / 2 / self.sample_rate
            yield piece
        async with self.changed:
            self.finished += 1
            self.changed.notify_all()

    async def asked(self, count: int) -> Request:
        """The ``count``-th request, once it is made."""
        await self._until(lambda: len(self.requests) >= count)
        return self.requests[count - 1]

    async def made(self, count: int) -> float:
        """Seconds of audio made once ``count`` requests are voiced whole."""
        await self._until(lambda: self.finished >= count)
        return self.made_secs

    async def _until(self, predicate) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), 30)


def chunk(text: str) -> AggregatedTextFrame:
    return AggregatedTextFrame(text, TextType.SENTENCE)


@pytest.mark.parametrize("speculative", [True, False], ids=["held", "committed"])
async def test_a_held_replys_later_chunks_are_needed_from_the_commit(speculative: bool):
    voice = RecordingVoice(caller_voice())
    tts = SharedPiperTTSService(engine=voice)  # type: ignore[arg-type]
    async with RunningPipeline([tts]) as run:
        await run.queue(ReplySpeculationFrame(speculative=speculative))
        await run.queue(LLMFullResponseStartFrame(), chunk(CHUNKS[0]))
        first_secs = await voice.made(1)
        made_at = time.monotonic()
        await asyncio.sleep(COMMIT_DELAY_SECS)  # the caller's turn is still open

        await run.queue(chunk(CHUNKS[1]))
        second = await voice.asked(2)
        assert second.needed_at is not None
        if speculative:
            # Nothing was heard yet: the first chunk's audio plays from the commit at
            # the soonest, so the second chunk is needed no sooner than that after now.
            assert second.needed_at == pytest.approx(second.asked_at + first_secs, abs=0.2)
        else:
            # Heard from when it was made: the caller ran out while the LLM was writing.
            assert second.needed_at < second.asked_at
            assert second.needed_at <= made_at + first_secs

        both_secs = await voice.made(2)
        committed_at = time.monotonic()
        await run.queue(UserStoppedSpeakingFrame())
        await run.queue(chunk(CHUNKS[2]))
        third = await voice.asked(3)
        assert third.needed_at is not None
        if speculative:
            assert third.needed_at == pytest.approx(committed_at + both_secs, abs=0.2)
        else:
            # The first chunk's audio ran out before the second was made: counted from
            # when they were made, the two end well before "the commit + both".
            assert third.needed_at < committed_at + both_secs - first_secs / 2
        await run.queue(LLMFullResponseEndFrame())
