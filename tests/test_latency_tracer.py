"""The latency tracer: when each reply reaches the caller, and which completion answers a turn."""

from __future__ import annotations

import asyncio

import numpy as np
import soxr
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    ErrorFrame,
    Frame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams

from tests.pipelines import RunningPipeline
from tests.speech import caller_voice
from voxline.engines.whisper import MAX_UTTERANCE_SECS, WhisperEngine
from voxline.models import resolve_whisper
from voxline.processors.latency import LatencyTracer
from voxline.processors.stt import SharedWhisperSTTService
from voxline.processors.turn_trace import TurnTrace
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


class _Feed:
    """Frames shown to a tracer in the order a call's pipeline pushes them."""

    def __init__(self, tracer: LatencyTracer) -> None:
        self.tracer = tracer
        self.pipeline = FrameProcessor()
        params = TransportParams(audio_out_enabled=True, audio_out_sample_rate=RATE)
        self.output = AudioFileTransport(np.zeros(RATE // 10, np.float32), RATE, params=params)
        self.clock = 0

    async def __call__(self, *frames: Frame, written: bool = False) -> None:
        source = self.output.output() if written else self.pipeline
        for frame in frames:
            self.clock += 10_000_000
            await self.tracer.on_push_frame(
                FramePushed(
                    source=source,
                    destination=self.pipeline,
                    frame=frame,
                    direction=FrameDirection.DOWNSTREAM,
                    timestamp=self.clock,
                )
            )


def _reply(text: str) -> list[Frame]:
    return [LLMFullResponseStartFrame(), LLMTextFrame(text), AggregatedTextFrame(text, "sentence")]


async def _answer(feed: _Feed, text: str) -> None:
    await feed(*_reply(text), _tone(REPLY_LEVEL, 0.2))
    await feed(BotStartedSpeakingFrame(), _tone(REPLY_LEVEL, 0.2), written=True)
    await feed(LLMFullResponseEndFrame(), BotStoppedSpeakingFrame())


async def _first_sentence_played(feed: _Feed) -> None:
    """A question, and the first sentence of its reply playing; the LLM has finished
    writing, TTS has not finished synthesizing (its context is open)."""
    await feed(VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await feed(TranscriptionFrame("Where is my parcel?", "c", "t"), LLMFullResponseStartFrame())
    await feed(LLMTextFrame("It left the depot. It arrives today."))
    await feed(AggregatedTextFrame("It left the depot.", "sentence"))
    await feed(TTSStartedFrame(context_id="reply"), _tone(REPLY_LEVEL, 0.2))
    await feed(BotStartedSpeakingFrame(), _tone(REPLY_LEVEL, 0.2), written=True)
    await feed(LLMFullResponseEndFrame())


async def test_a_gap_while_synthesis_runs_late_does_not_end_the_reply():
    # Measured under load: the transport's queue ran dry for 0.35 s between two sentences
    # and pipecat said the bot stopped speaking, with the reply's second half to come.
    done: list[TurnTrace] = []
    feed = _Feed(LatencyTracer(on_turn=done.append))
    await _first_sentence_played(feed)
    await feed(BotStoppedSpeakingFrame())
    assert not done, "a pause inside the reply ended the turn"
    assert not feed.tracer.idle.is_set()

    await feed(AggregatedTextFrame("It arrives today.", "sentence"), _tone(REPLY_LEVEL, 0.2))
    await feed(TTSStoppedFrame(context_id="reply"))
    await feed(BotStartedSpeakingFrame(), _tone(REPLY_LEVEL, 0.2), written=True)
    assert not done
    await feed(BotStoppedSpeakingFrame())
    [turn] = done
    assert not turn.interrupted and feed.tracer.idle.is_set()


async def test_a_reply_whose_synthesis_ends_after_the_bot_went_quiet_is_finished():
    # The last sentence played out before TTS closed the reply (nothing more came).
    done: list[TurnTrace] = []
    feed = _Feed(LatencyTracer(on_turn=done.append))
    await _first_sentence_played(feed)
    await feed(BotStoppedSpeakingFrame())
    assert not done
    await feed(TTSStoppedFrame(context_id="reply"))
    [turn] = done
    assert turn.bot_text == "It left the depot. It arrives today." and not turn.interrupted


async def test_the_greeting_is_done_when_it_has_played_not_when_it_was_synthesized():
    # TTS closes a short line before the transport has started playing it.
    feed = _Feed(LatencyTracer())
    await feed(TTSStartedFrame(context_id="greeting"), _tone(GREETING_LEVEL, 0.5))
    await feed(TTSStoppedFrame(context_id="greeting"))
    assert not feed.tracer.greeting_done.is_set()
    await feed(BotStartedSpeakingFrame(), _tone(GREETING_LEVEL, 0.5), written=True)
    await feed(BotStoppedSpeakingFrame())
    assert feed.tracer.greeting_done.is_set()


async def test_the_turn_the_caller_hung_up_on_is_not_finished():
    # A hang-up tears the call down; the transport's last "stopped speaking" is no end of
    # a reply the caller did not hear out.
    done: list[TurnTrace] = []
    feed = _Feed(LatencyTracer(on_turn=done.append))
    await _first_sentence_played(feed)
    await feed(TTSStoppedFrame(context_id="reply"), CancelFrame(), BotStoppedSpeakingFrame())
    assert not done
    [turn] = feed.tracer.turns
    assert not turn.complete and turn.audio_out is not None


async def test_a_completion_cancelled_by_the_callers_next_words_is_not_the_answer():
    # Measured on a call: the caller paused mid-question, the LLM started on the first
    # half, and the second half's transcript interrupted it before its first token.
    done: list[TurnTrace] = []
    feed = _Feed(LatencyTracer(on_turn=done.append))
    await feed(VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await feed(VADUserStartedSpeakingFrame(), TranscriptionFrame("I lost my card.", "c", "t"))
    await feed(VADUserStoppedSpeakingFrame(stop_secs=0.2), LLMFullResponseStartFrame())
    await feed(TranscriptionFrame("What should I do?", "c", "t"), InterruptionFrame())
    await feed(LLMFullResponseEndFrame())
    assert not done, "the cancelled completion ended the turn"

    await _answer(feed, "Call us to block it.")
    [turn] = done
    assert turn.caller_text == "I lost my card. What should I do?"
    assert turn.bot_text == "Call us to block it."
    assert not turn.interrupted
    assert turn.latencies_ms()["voice_to_voice"] is not None
    assert feed.tracer.idle.is_set()


async def test_a_half_generated_answer_the_caller_talked_over_is_an_interrupted_turn():
    done: list[TurnTrace] = []
    feed = _Feed(LatencyTracer(on_turn=done.append))
    await feed(VADUserStoppedSpeakingFrame(stop_secs=0.2), TranscriptionFrame("Hi.", "c", "t"))
    await feed(*_reply("Hello, how"))
    await feed(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await feed(TranscriptionFrame("What is my balance?", "c", "t"), InterruptionFrame())
    await feed(LLMFullResponseEndFrame())
    [first] = done
    assert first.caller_text == "Hi." and first.interrupted

    await _answer(feed, "Ten dollars.")
    second = done[1]
    assert second.caller_text == "What is my balance?" and second.bot_text == "Ten dollars."
    assert not second.interrupted and second.audio_out is not None


class _Seen(BaseObserver):
    """When frames of some types were pushed, on the pipeline clock."""

    def __init__(self, *types: type[Frame]) -> None:
        super().__init__(observe_every_push=False)
        self.types = types
        self.times: dict[type[Frame], list[int]] = {kind: [] for kind in types}
        self.changed = asyncio.Event()

    async def on_push_frame(self, data: FramePushed) -> None:
        for kind in self.types:
            if isinstance(data.frame, kind):
                self.times[kind].append(data.timestamp)
                self.changed.set()

    async def wait_for(self, kind: type[Frame], count: int) -> None:
        while len(self.times[kind]) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 60)


def _utterance(audio: np.ndarray, stop_secs: float = 0.2) -> list[Frame]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    pieces = [pcm[start : start + RATE] for start in range(0, pcm.size, RATE)]
    return [
        VADUserStartedSpeakingFrame(),
        *(InputAudioRawFrame(piece.tobytes(), RATE, 1) for piece in pieces),
        VADUserStoppedSpeakingFrame(stop_secs=stop_secs),
    ]


async def test_an_utterance_whose_transcription_failed_does_not_time_the_next_turn():
    # pipecat's segmented STT answers a failed utterance with an ErrorFrame and nothing
    # else: the next transcript was timed from the failed utterance's end of speech.
    engine = WhisperEngine(resolve_whisper("tiny.en"), num_workers=1)
    try:
        stt = SharedWhisperSTTService(engine=engine)
        done: list[TurnTrace] = []
        tracer = LatencyTracer(on_turn=done.append)
        seen = _Seen(VADUserStoppedSpeakingFrame, ErrorFrame, TranscriptionFrame)
        voice = caller_voice()
        speech = np.frombuffer(voice.synthesize_all("What time do you open?"), np.int16)
        speech = soxr.resample(speech.astype(np.float32) / 32768, voice.sample_rate, RATE)
        too_long = np.zeros(int((MAX_UTTERANCE_SECS + 1) * RATE), np.float32)

        async with RunningPipeline([stt], observers=[tracer, seen]) as run:
            await run.queue(*_utterance(too_long))
            await seen.wait_for(ErrorFrame, 1)  # Whisper refused it: no transcript
            await run.queue(*_utterance(speech))
            await seen.wait_for(TranscriptionFrame, 1)
    finally:
        await engine.close()

    [first_stop, second_stop] = seen.times[VADUserStoppedSpeakingFrame]
    [turn] = tracer.turns
    assert "open" in turn.caller_text.lower(), turn.caller_text
    assert turn.stt_request == second_stop, (turn.stt_request, first_stop, second_stop)
    assert turn.speech_end == second_stop - int(0.2e9)
    assert turn.latencies_ms()["stt"] is not None and turn.latencies_ms()["stt"] < 60_000


def _tool_result(name: str, result: dict, call_id: str) -> FunctionCallResultFrame:
    return FunctionCallResultFrame(
        function_name=name,
        tool_call_id=call_id,
        arguments={},
        result=result,
        run_llm=False,
    )


async def _turn_answered_by_a_tool(words: str, tool: str, result: dict) -> _Feed:
    """A caller's turn whose completion calls ``tool``, which gives ``result``."""
    feed = _Feed(LatencyTracer())
    await feed(VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await feed(TranscriptionFrame(words, "c", "t"), LLMFullResponseStartFrame())
    await feed(_tool_result(tool, result, "1"))
    await feed(LLMFullResponseEndFrame())
    return feed


async def test_after_end_call_the_call_is_never_idle_again():
    # A harness that ends the call when it goes idle (talk, voxline test) must not queue
    # its end ahead of the goodbye, which the hang-up queues just after this result.
    feed = await _turn_answered_by_a_tool("Goodbye.", "end_call", {"status": "ending the call"})
    assert not feed.tracer.idle.is_set()
    await _answer(feed, "Thank you for calling. Goodbye.")
    assert not feed.tracer.idle.is_set()


async def test_a_refused_end_call_or_another_tool_leaves_the_call_to_go_idle():
    refused = {"error": "the call is not running"}
    feed = await _turn_answered_by_a_tool("Bye.", "end_call", refused)
    assert feed.tracer.idle.is_set()
    feed = await _turn_answered_by_a_tool("Balance?", "get_balance", {"balance": "1.00"})
    assert feed.tracer.idle.is_set()
