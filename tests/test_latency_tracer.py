"""The latency tracer marks when each reply reaches the caller, even behind other audio."""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.transports.base_transport import TransportParams

from tests.pipelines import RunningPipeline
from voxline.processors.latency import LatencyTracer, TurnTrace
from voxline.transports.audiofile import AudioFileTransport

RATE = 16_000
GREETING_LEVEL, REPLY_LEVEL = 1000, 3000


class _SpeakingStarted(BaseObserver):
    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.event = asyncio.Event()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, BotStartedSpeakingFrame):
            self.event.set()


def _tone(level: int, secs: float) -> TTSAudioRawFrame:
    audio = np.full(int(RATE * secs), level, dtype=np.int16).tobytes()
    return TTSAudioRawFrame(audio=audio, sample_rate=RATE, num_channels=1)


async def test_a_reply_queued_behind_the_greeting_is_marked_when_it_plays():
    done: asyncio.Queue[TurnTrace] = asyncio.Queue(maxsize=4)
    tracer = LatencyTracer(on_turn=done.put_nowait)
    speaking = _SpeakingStarted()
    params = TransportParams(audio_out_enabled=True, audio_out_sample_rate=RATE)
    transport = AudioFileTransport(np.zeros(RATE // 10, np.float32), RATE, params=params)

    async with RunningPipeline(
        [transport.output()], out_sample_rate=RATE, observers=[tracer, speaking]
    ) as run:
        await run.queue(_tone(GREETING_LEVEL, 1.0))
        await asyncio.wait_for(speaking.event.wait(), 10)
        # The caller's question is answered while the greeting is still playing:
        # the bot never stops speaking, so no new speaking period begins.
        await run.queue(
            TranscriptionFrame("What is my balance?", "caller", "now"),
            LLMFullResponseStartFrame(),
            LLMTextFrame("Your balance is ten dollars."),
            AggregatedTextFrame("Your balance is ten dollars.", "sentence"),
            _tone(REPLY_LEVEL, 0.5),
            LLMFullResponseEndFrame(),
        )
        turn = await asyncio.wait_for(done.get(), 10)

    heard = transport.recording()  # on the pipeline clock, like the tracer's times
    greeting_start = np.flatnonzero(heard == GREETING_LEVEL)[0] / RATE * 1e9
    reply_start = np.flatnonzero(heard == REPLY_LEVEL)[0] / RATE * 1e9
    assert turn.tts_first_audio is not None and turn.audio_out is not None
    assert reply_start - greeting_start > 0.9e9  # it played after the greeting
    assert abs(turn.audio_out - reply_start) < 0.06e9
    assert turn.complete and not turn.interrupted
