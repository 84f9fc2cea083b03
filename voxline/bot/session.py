"""Build one call's pipecat pipeline from a Persona, the shared engines and a transport.

    transport in → VAD → STT → user context → LLM → chunker → TTS → transport out
    → assistant context

Each call gets its own cheap, stateful pieces (Silero VAD state, LLM context,
chunker); the expensive models are the Runtime's shared engines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import ErrorFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from voxline.bot.call_control import PipelineCallControl
from voxline.bot.runtime import Runtime
from voxline.bot.tool_wiring import persona_context, register_tools
from voxline.engines.orpheus import OrpheusSampling
from voxline.personas import Persona
from voxline.processors.chunker import ChunkerProcessor
from voxline.processors.latency import LatencyTracer
from voxline.processors.llm import VoxlineLLMService
from voxline.processors.stt import SharedWhisperSTTService
from voxline.processors.tts import SharedPiperTTSService
from voxline.processors.tts_orpheus import OrpheusTTSService
from voxline.tools.builtins import CallControl

STT_SAMPLE_RATE = 16_000


@dataclass
class Call:
    """One running call: its pipeline worker, conversation context and latency trace."""

    worker: PipelineWorker
    context: LLMContext
    tracer: LatencyTracer
    persona: Persona


def dtmf_processors(persona: Persona) -> list[FrameProcessor]:
    """Keypad digits become the caller's words ("Caller pressed 1 2 3 #"), if enabled."""
    if not persona.dtmf.enabled:
        return []
    return [
        DTMFAggregator(
            timeout=persona.dtmf.timeout_secs,
            termination_digit=KeypadEntry(persona.dtmf.terminator),
            prefix=persona.dtmf.prefix,
        )
    ]


def persona_tts(persona: Persona, runtime: Runtime) -> TTSService:
    """The persona's voice: Piper on the shared voice, or Orpheus on the shared SNAC."""
    if persona.tts.engine == "orpheus":
        assert persona.tts.base_url is not None and persona.tts.voice is not None
        return OrpheusTTSService(
            decoder=runtime.snac(),
            base_url=persona.tts.base_url,
            model=persona.tts.model,
            voice=persona.tts.voice,
            sampling=OrpheusSampling(
                temperature=persona.tts.temperature,
                top_p=persona.tts.top_p,
                repetition_penalty=persona.tts.repetition_penalty,
                max_tokens=persona.tts.max_tokens,
            ),
        )
    return SharedPiperTTSService(engine=runtime.piper(persona))


APOLOGY_INTERVAL_SECS = 5.0


def apologise_on_failure(
    worker: PipelineWorker, persona: Persona, *, failing: tuple[FrameProcessor, ...]
) -> None:
    """When STT or the LLM fails, the caller hears the persona's apology and the call goes on.

    At most one apology per few seconds, so a server that keeps failing does not
    turn the call into a loop of apologies.
    """
    last = {"at": -APOLOGY_INTERVAL_SECS}

    @worker.event_handler("on_pipeline_error")
    async def _apologise(worker: PipelineWorker, frame: ErrorFrame) -> None:
        if frame.processor not in failing:
            return
        logger.warning(f"{frame.processor} failed: {frame.error}; apologising to the caller")
        now = time.monotonic()
        if now - last["at"] >= APOLOGY_INTERVAL_SECS:
            last["at"] = now
            await worker.queue_frame(TTSSpeakFrame(persona.phrases.apology))


def build_call(
    persona: Persona,
    runtime: Runtime,
    transport: BaseTransport,
    *,
    tracer: LatencyTracer,
    out_sample_rate: int,
    call_control: CallControl | None = None,
    facts: dict[str, str] | None = None,
) -> Call:
    """Assemble the call's pipeline. ``runtime.prepare(persona)`` must have run.

    Args:
        persona: who answers.
        runtime: the shared engines.
        transport: the call's wire (Twilio, WebRTC, an audio file).
        tracer: records per-turn latency for this call.
        out_sample_rate: the transport's output audio rate.
        call_control: what the built-in tools do to the call (hang up, transfer);
            by default, ``end_call`` ends the pipeline after the goodbye.
        facts: what the bot may know about this call (caller number, call id, time);
            they follow the persona's cached prompt prefix.
    """
    vad = VADProcessor(
        vad_analyzer=SileroVADAnalyzer(
            sample_rate=STT_SAMPLE_RATE,
            params=VADParams(
                confidence=persona.turn.vad_confidence,
                start_secs=persona.turn.vad_start_secs,
                stop_secs=persona.turn.stop_secs,
                min_volume=persona.turn.min_volume,
            ),
        )
    )
    stt = SharedWhisperSTTService(
        engine=runtime.whisper(persona),
        language=persona.language,
        beam_size=persona.stt.beam_size,
        # Whisper gets the utterance as the VAD cut it plus a little silence: enough
        # to finish the last word without paying for half a second of nothing.
        trailing_silence_secs=0.2,
    )
    backend = runtime.llm_backend(persona)
    llm = VoxlineLLMService(
        backend=backend,
        api_key="not-needed",
        base_url=backend.endpoint.api_url,
        settings=VoxlineLLMService.Settings(
            model=backend.endpoint.model,
            temperature=persona.llm.temperature,
            max_tokens=persona.llm.max_tokens,
        ),
    )
    control = call_control or PipelineCallControl(persona.phrases.goodbye)
    context = persona_context(persona, facts)
    register_tools(llm, persona, control)
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            # The turn ends when the VAD hears stop_secs of silence and the
            # transcript is in: no end-of-turn model waiting for a fallback.
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)]
            ),
            user_idle_timeout=0,
        ),
    )
    tts = persona_tts(persona, runtime)
    pipeline = Pipeline(
        [
            transport.input(),
            vad,
            stt,
            *dtmf_processors(persona),
            user_aggregator,
            llm,
            ChunkerProcessor(
                min_first_words=persona.chunking.min_first_words,
                max_wait_ms=persona.chunking.max_wait_ms,
                max_chars=persona.chunking.max_chars,
            ),
            tts,
            transport.output(),
            assistant_aggregator,
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=STT_SAMPLE_RATE,
            audio_out_sample_rate=out_sample_rate,
            enable_metrics=True,
        ),
        observers=[tracer],
        idle_timeout_secs=persona.limits.idle_timeout_secs,
        enable_rtvi=False,
    )
    apologise_on_failure(worker, persona, failing=(stt, llm))
    if persona.greeting:
        greeting = persona.greeting

        @worker.event_handler("on_pipeline_started")
        async def _greet(worker: PipelineWorker, frame):
            await worker.queue_frame(TTSSpeakFrame(greeting))

    if isinstance(control, PipelineCallControl):
        control.worker = worker
    return Call(worker=worker, context=context, tracer=tracer, persona=persona)
