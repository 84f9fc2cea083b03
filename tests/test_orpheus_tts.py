"""The Orpheus TTS service in a pipecat pipeline, against a streaming completions server on
loopback: audio frames, when the first one comes, cancellation, and failing servers."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from orpheus_server import OrpheusReplayServer, Replay
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from voxline.engines.lines import LineMemory
from voxline.engines.orpheus import CODES_PER_FRAME, SAMPLES_PER_FRAME
from voxline.engines.snac import SNACDecoder, load_snac
from voxline.processors.tts_orpheus import OrpheusTTSService

OUT_RATE = 16_000


def orpheus_tokens(frames: int, seed: int = 5) -> list[int]:
    codes = np.random.default_rng(seed).integers(0, 4096, frames * CODES_PER_FRAME)
    return [int(code) + 10 + (i % 7) * 4096 for i, code in enumerate(codes)] + [2]


class Recorder(FrameProcessor):
    """The end of the pipeline: keeps audio frames with their arrival time, and errors."""

    def __init__(self) -> None:
        super().__init__()
        self.audio: list[tuple[float, TTSAudioRawFrame]] = []
        self.errors: list[ErrorFrame] = []
        self.stops = 0
        self.stopped = asyncio.Event()
        self.first_audio = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio.append((time.perf_counter(), frame))
            self.first_audio.set()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame)
            self.stopped.set()
        elif isinstance(frame, TTSStoppedFrame):
            self.stops += 1
            self.stopped.set()
        await self.push_frame(frame, direction)


@pytest.fixture(scope="module")
def decoder():
    # Warmed as the Runtime warms it: the timing tests measure when a window is decoded,
    # not torch's first-call initialisation (up to ~1 s on a busy 2-core machine).
    snac = SNACDecoder(load_snac("random:3"), max_wait_ms=2)
    snac.warm_up()
    return snac


class Call:
    """One pipeline: the Orpheus service and a recorder, running until closed."""

    def __init__(
        self,
        decoder: SNACDecoder,
        server: OrpheusReplayServer,
        voice: str = "tara",
        lines: LineMemory | None = None,
    ):
        self.recorder = Recorder()
        self.tts = OrpheusTTSService(
            decoder=decoder, base_url=server.url, model="orpheus", voice=voice, lines=lines
        )
        self.worker = PipelineWorker(
            Pipeline([self.tts, self.recorder]),
            params=PipelineParams(audio_out_sample_rate=OUT_RATE),
            enable_rtvi=False,
        )
        self.runner = WorkerRunner(handle_sigint=False)
        self.task: asyncio.Task | None = None

        @self.worker.event_handler("on_pipeline_error")
        async def _error(worker: PipelineWorker, frame: ErrorFrame) -> None:
            self.recorder.errors.append(frame)
            self.recorder.stopped.set()

    async def __aenter__(self) -> Call:
        await self.runner.add_workers(self.worker)
        self.task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.task, 20)

    async def say(self, text: str) -> None:
        await self.worker.queue_frame(TTSSpeakFrame(text))

    def samples(self) -> int:
        return sum(len(frame.audio) // 2 for _, frame in self.recorder.audio)


async def serve(replay: Replay) -> OrpheusReplayServer:
    return await OrpheusReplayServer(replay).start()


async def test_audio_starts_at_the_28th_token_and_every_frame_is_heard(decoder):
    frames = 10
    server = await serve(Replay(orpheus_tokens(frames), tokens_per_sec=10))
    try:
        async with Call(decoder, server) as call:
            await call.say("Your balance is one thousand two hundred dollars.")
            await asyncio.wait_for(call.recorder.stopped.wait(), 30)
            first_audio = call.recorder.audio[0][0]
            sent = server.replay.sent_at
            before = sum(1 for at in sent if at <= first_audio)
            print(f"\nfirst audio after {before} tokens had been sent")
            assert before >= 28, "audio came before 4 frames of codes existed"
            assert before < 35, "the first window was not decoded at the 28th token"
            assert call.recorder.errors == []
        # Counted after the pipeline ended: every frame of the utterance was delivered.
        expected = frames * SAMPLES_PER_FRAME * OUT_RATE // 24_000
        assert abs(call.samples() - expected) <= 2 * OUT_RATE // 100, call.samples()
        request = server.replay.requests[0]
        assert request["prompt"].startswith("<custom_token_3><|begin_of_text|>tara: Your balance")
        assert request["stream"] is True and request["stop_token_ids"] == [128258]
    finally:
        await server.stop()


async def test_a_server_that_starts_late_is_heard_whole_as_one_reply(decoder):
    # pipecat ends a TTS context after 3 s without audio and reports it as silent (after
    # three, it stops using the service): a busy server's late start must not do that.
    frames = 5
    server = await serve(Replay(orpheus_tokens(frames), first_token_delay=4.0))
    try:
        async with Call(decoder, server) as call:
            started = time.perf_counter()
            await call.say("One moment while I look that up.")
            await asyncio.wait_for(call.recorder.stopped.wait(), 30)
            assert call.recorder.audio[0][0] - started >= 4.0
            assert call.recorder.errors == []
            assert call.recorder.stops == 1
        expected = frames * SAMPLES_PER_FRAME * OUT_RATE // 24_000
        assert abs(call.samples() - expected) <= 2 * OUT_RATE // 100, call.samples()
    finally:
        await server.stop()


async def test_an_interruption_cancels_the_stream_on_the_server(decoder):
    server = await serve(Replay(orpheus_tokens(400), tokens_per_sec=100))
    try:
        async with Call(decoder, server) as call:
            await call.say("A very long answer that the caller interrupts.")
            await asyncio.wait_for(call.recorder.first_audio.wait(), 30)
            await call.worker.queue_frame(InterruptionFrame())
            await asyncio.wait_for(server.replay.client_gone.wait(), 5)
            sent = len(server.replay.sent_at)
            assert sent < len(server.replay.tokens) - 100, "the server kept generating"
            assert not server.replay.finished.is_set()
            # The call goes on: the next reply is spoken.
            server.replay.tokens = orpheus_tokens(5)
            call.recorder.first_audio.clear()
            await call.say("Sorry, go ahead.")
            await asyncio.wait_for(call.recorder.first_audio.wait(), 30)
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("mode", "tokens", "expected"),
    [
        ("http_error", orpheus_tokens(6), "answered HTTP 500: CUDA out of memory"),
        ("close_mid", orpheus_tokens(20), "Orpheus stream from"),
        ("not_json", orpheus_tokens(6), "an event that is not JSON"),
        ("ok", [10 + 4096 * 9] * 40 + [2], "the stream held no audio tokens"),
    ],
)
async def test_failing_servers_end_the_turn_with_an_error_and_the_call_goes_on(
    decoder, mode, tokens, expected
):
    server = await serve(Replay(tokens, mode=mode))
    try:
        async with Call(decoder, server) as call:
            await call.say("Hello there.")
            await asyncio.wait_for(call.recorder.stopped.wait(), 30)
            assert call.recorder.errors, "no error was reported"
            assert expected in call.recorder.errors[0].error
            server.replay.mode, server.replay.tokens = "ok", orpheus_tokens(5)
            call.recorder.first_audio.clear()
            await call.say("Still here.")
            await asyncio.wait_for(call.recorder.first_audio.wait(), 30)  # the next turn speaks
    finally:
        await server.stop()


async def test_a_stream_shorter_than_one_window_is_still_spoken(decoder):
    server = await serve(Replay(orpheus_tokens(2)))
    try:
        async with Call(decoder, server) as call:
            await call.say("Hi.")
            await asyncio.wait_for(call.recorder.stopped.wait(), 30)
            assert call.recorder.errors == []
        expected = 2 * SAMPLES_PER_FRAME * OUT_RATE // 24_000
        assert abs(call.samples() - expected) <= OUT_RATE // 100
    finally:
        await server.stop()


GREETING = "Hello, you have reached Northwind Bank."


async def test_a_fixed_line_spoken_whole_is_replayed_to_the_next_call_without_a_request(decoder):
    server = await serve(Replay(orpheus_tokens(10)))
    lines: LineMemory = LineMemory()
    lines.want([GREETING, "Goodbye."])
    try:
        async with Call(decoder, server, lines=lines) as first:
            await first.say(GREETING)
            await asyncio.wait_for(first.recorder.stopped.wait(), 30)
        assert GREETING in lines and len(server.replay.requests) == 1
        async with Call(decoder, server, lines=lines) as second:
            await second.say(GREETING)
            await asyncio.wait_for(second.recorder.stopped.wait(), 30)
            assert second.recorder.errors == []
        assert len(server.replay.requests) == 1, "the remembered greeting asked the server"
        assert lines.played == 1
        assert second.samples() == first.samples() > 0
        async with Call(decoder, server, lines=lines) as third:
            await third.say("Your balance is forty dollars.")  # not a fixed line
            await asyncio.wait_for(third.recorder.stopped.wait(), 30)
        assert len(server.replay.requests) == 2 and len(lines) == 1
    finally:
        await server.stop()


async def test_a_fixed_line_cut_by_an_interruption_is_not_kept(decoder):
    server = await serve(Replay(orpheus_tokens(400), tokens_per_sec=100))
    lines: LineMemory = LineMemory()
    lines.want([GREETING])
    try:
        async with Call(decoder, server, lines=lines) as call:
            await call.say(GREETING)
            await asyncio.wait_for(call.recorder.first_audio.wait(), 30)
            await call.worker.queue_frame(InterruptionFrame())
            await asyncio.wait_for(server.replay.client_gone.wait(), 5)
        assert GREETING not in lines and lines.wants(GREETING)
    finally:
        await server.stop()


@pytest.mark.slow
async def test_an_orpheus_persona_answers_a_whole_call(tmp_path):
    """Runtime + session wiring: an Orpheus persona speaks its greeting and its reply."""
    from speech import speech_16k

    from voxline.bot.runtime import Runtime
    from voxline.bot.talk import talk
    from voxline.config import ServerConfig
    from voxline.engine_config import EnginesConfig, SNACConfig
    from voxline.personas import load_persona

    server = await serve(Replay(orpheus_tokens(12), tokens_per_sec=400))
    persona_file = tmp_path / "orpheus.yaml"
    persona_file.write_text(
        "name: orpheus_desk\nprompt: You are a brief phone assistant.\n"
        "greeting: Hello, how can I help?\n"
        f"tts: {{engine: orpheus, voice: leo, base_url: '{server.url}'}}\n"
    )
    config = ServerConfig(engines=EnginesConfig(snac=SNACConfig(model="random:1")))
    try:
        async with Runtime(config) as runtime:
            persona = load_persona(persona_file)
            result = await talk(persona, runtime, speech_16k("What time do you open?"), 16_000)
        [turn] = result.turns
        assert turn.caller_text and turn.bot_text.strip() and turn.error is None
        assert turn.tts_first_audio is not None and turn.audio_out is not None
        assert result.sample_rate == 24_000 and result.audio.size > 24_000
        prompts = [request["prompt"] for request in server.replay.requests]
        assert any("leo: Hello, how can I help?" in prompt for prompt in prompts), prompts
    finally:
        await server.stop()
