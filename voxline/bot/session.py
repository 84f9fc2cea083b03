"""Build one call's pipecat pipeline from a Persona, the shared engines and a transport.

    transport in → turn-taker (VAD, end of turn, STT) → user context → LLM → chunker
    → TTS → speculative audio gate → transport out → assistant context

Each call gets its own cheap, stateful pieces (its Silero VAD state, on the
process's one Silero model; LLM context; chunker); the expensive models (Whisper,
the end-of-turn model, the LLM server, the voice) are the Runtime's shared engines.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import ErrorFrame, TTSSpeakFrame, UserIdleTimeoutUpdateFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_stop import ExactMatch

from voxline.bot.call_control import PipelineCallControl
from voxline.bot.runtime import Runtime
from voxline.bot.tool_wiring import (
    call_prefix,
    persona_context,
    persona_system_instruction,
    register_tools,
)
from voxline.engines.orpheus import OrpheusSampling
from voxline.engines.turn_model import TurnDecision
from voxline.personas import Persona
from voxline.processors.chunker import ChunkerProcessor
from voxline.processors.frames import spoken_line
from voxline.processors.keypad import KeypadTurnAggregator
from voxline.processors.latency import LatencyTracer
from voxline.processors.llm import VoxlineLLMService
from voxline.processors.speculation import SpeculativeAudioGate
from voxline.processors.tts import SharedPiperTTSService
from voxline.processors.tts_orpheus import OrpheusTTSService
from voxline.processors.turn import BotAudioHold, TurnTaker, TurnTakingSettings
from voxline.processors.turn_state import IdleCheck
from voxline.processors.turn_stop import OnceEagerUserTurnStrategies
from voxline.processors.vad import SharedSileroVADAnalyzer
from voxline.tools.builtins import CallControl
from voxline.tools.runner import ToolRunner

STT_SAMPLE_RATE = 16_000


@dataclass
class Call:
    """One running call: its pipeline worker, conversation context and latency trace."""

    worker: PipelineWorker
    context: LLMContext
    tracer: LatencyTracer
    persona: Persona


def dtmf_processors(persona: Persona) -> list[FrameProcessor]:
    """Keypad digits become the caller's words ("Caller pressed 123#"), and a turn, if enabled."""
    if not persona.dtmf.enabled:
        return []
    return [
        KeypadTurnAggregator(
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
            lines=runtime.lines(persona),
        )
    return SharedPiperTTSService(engine=runtime.piper(persona), lines=runtime.lines(persona))


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
            await worker.queue_frame(persona_line(persona, "apology"))


def count_errors(
    worker: PipelineWorker, counts: Counter[str], stages: dict[str, FrameProcessor]
) -> None:
    """Count every error that reaches the call's worker by the stage that raised it.

    ``stages`` names the call's processors (``stt``, ``llm``, ``tts``); an error from any
    other processor counts as ``transport`` when it is the wire's, else ``pipeline``.
    The counts are the process's (``/metrics``' ``voxline_errors_total``).
    """
    kinds = {id(processor): kind for kind, processor in stages.items()}

    @worker.event_handler("on_pipeline_error")
    async def _count(worker: PipelineWorker, frame: ErrorFrame) -> None:
        kind = kinds.get(id(frame.processor))
        if kind is None:
            wire = isinstance(frame.processor, (BaseInputTransport, BaseOutputTransport))
            kind = "transport" if wire else "pipeline"
        counts[kind] += 1


def persona_line(persona: Persona, line: str, text: str | None = None) -> TTSSpeakFrame:
    """One of the persona's fixed lines, non-interruptible if the persona says so."""
    words = text if text is not None else getattr(persona.phrases, line)
    return spoken_line(words, interruptible=line not in persona.turn.uninterruptible)


TURN_TAKING_FIELDS = {field.name for field in dataclasses.fields(TurnTakingSettings)}


def turn_taker(
    persona: Persona,
    runtime: Runtime,
    on_stt: Callable[[int, float], None] | None = None,
    hold: BotAudioHold | None = None,
    reply_engines_idle: IdleCheck | None = None,
) -> TurnTaker:
    """The call's turn-taking: its own VAD state, the shared Whisper and end-of-turn model.

    ``on_stt(batch_size, queue_wait_secs)`` hears each transcript's Whisper batch (traces);
    ``hold`` is the output transport's hold on the bot's audio, if it has one;
    ``reply_engines_idle`` says whether the call's LLM server and voice have nothing to do
    (the caller's words so far are then prefilled on the LLM server,
    :mod:`~voxline.processors.turn_prefill`).
    """
    turn = persona.turn
    whisper = runtime.whisper(persona)
    language, beam_size = persona.language, persona.stt.beam_size

    async def transcribe(audio: np.ndarray) -> str:
        heard = await whisper.transcribe(audio, language=language, beam_size=beam_size)
        if on_stt is not None and heard.batch_size:
            on_stt(heard.batch_size, heard.queue_wait_secs)
        return heard.text

    engine = runtime.end_of_turn(persona)

    async def decide(audio: np.ndarray) -> TurnDecision:
        assert engine is not None
        return await engine.decide(audio, threshold=turn.model_threshold)

    return TurnTaker(
        # One Silero model for the process; each call keeps its own VAD state.
        vad=SharedSileroVADAnalyzer(
            sample_rate=STT_SAMPLE_RATE,
            params=VADParams(
                confidence=turn.vad_confidence,
                start_secs=turn.vad_start_secs,
                # The VAD's quiet state is the start of a pause: the turn-taker
                # decides from there whether the turn is over.
                stop_secs=turn.early_secs,
                min_volume=turn.min_volume,
            ),
        ),
        transcribe=transcribe,
        transcriber_idle=lambda: whisper.idle,
        reply_engines_idle=reply_engines_idle,
        end_of_turn=decide if engine is not None else None,
        settings=TurnTakingSettings(
            **{
                **turn.model_dump(include=TURN_TAKING_FIELDS),
                # With no model, the old fixed silence alone ends the turn.
                "question_ends_turn": turn.question_ends_turn and turn.uses_model,
                "sentence_end_secs": turn.sentence_end_secs if turn.uses_model else None,
            }
        ),
        counters=runtime.turn_counters,
        hold=hold,
        not_understood=(
            (lambda: persona_line(persona, "not_understood"))
            if persona.phrases.not_understood
            else None
        ),
    )


def handle_idle_callers(
    worker: PipelineWorker,
    user_aggregator,
    persona: Persona,
    control: CallControl,
    turns: TurnTaker,
) -> None:
    """The idle line once after ``idle_prompt_secs`` of silence; goodbye after the timeout."""
    limits = persona.limits
    state = {"prompted": False}

    @user_aggregator.event_handler("on_user_turn_started")
    async def _caller_spoke(aggregator, strategy) -> None:
        if state["prompted"]:
            state["prompted"] = False
            if limits.idle_prompt_secs is not None:
                await aggregator.queue_frame(UserIdleTimeoutUpdateFrame(limits.idle_prompt_secs))

    @user_aggregator.event_handler("on_user_turn_idle")
    async def _idle(aggregator) -> None:
        first = limits.idle_prompt_secs or limits.idle_timeout_secs
        waited = limits.idle_timeout_secs if state["prompted"] else first
        if turns.heard_caller_within(waited):
            # The caller is talking (a turn not yet committed): not idle; count again.
            await aggregator.queue_frame(UserIdleTimeoutUpdateFrame(waited))
            return
        if limits.idle_prompt_secs is not None and not state["prompted"]:
            state["prompted"] = True
            logger.info(f"caller silent for {limits.idle_prompt_secs} s: idle line")
            await aggregator.queue_frame(UserIdleTimeoutUpdateFrame(limits.idle_timeout_secs))
            await worker.queue_frame(persona_line(persona, "idle"))
            return
        logger.info("caller still silent: goodbye")
        await control.end_call(persona.phrases.goodbye)


def build_call(
    persona: Persona,
    runtime: Runtime,
    transport: BaseTransport,
    *,
    tracer: LatencyTracer,
    out_sample_rate: int,
    call_control: CallControl | None = None,
    facts: dict[str, str] | None = None,
    tool_runners: Mapping[str, ToolRunner] | None = None,
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
        tool_runners: runners that replace some YAML tools' handlers (test fixtures).
    """
    backend = runtime.llm.backend(persona)
    context = persona_context(persona, facts)
    llm = VoxlineLLMService(
        backend=backend,
        # A call's own facts follow the cached persona prefix: computed as it starts.
        warm_context=call_prefix(persona, context) if facts else None,
        context=context,
        first_token_timeout_secs=persona.llm.first_token_timeout_secs,
        total_timeout_secs=persona.llm.total_timeout_secs,
        tool_call_max_tokens=persona.llm.tool_call_max_tokens,
        api_key="not-needed",
        base_url=backend.endpoint.api_url,
        settings=VoxlineLLMService.Settings(
            model=backend.endpoint.model,
            # The first message of every request, byte-identical in every call.
            system_instruction=persona_system_instruction(persona),
            temperature=persona.llm.temperature,
            max_tokens=persona.llm.max_tokens,
        ),
    )
    control = call_control or PipelineCallControl(
        persona.phrases.goodbye, interruptible="goodbye" not in persona.turn.uninterruptible
    )
    register_tools(llm, persona, control, replaced=tool_runners)
    first_idle = persona.limits.idle_prompt_secs or persona.limits.idle_timeout_secs
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            # The turn-taker decides when turns start and end and when the caller
            # interrupts; pipecat's eager strategy answers its speculative
            # transcripts and keeps the reply when the committed one is the same.
            user_turn_strategies=OnceEagerUserTurnStrategies(
                match_policy=ExactMatch(),
                enable_interruptions=False,
                speculation_timeout=max(5.0, persona.turn.stop_secs + 3.0),
            ),
            user_idle_timeout=first_idle,
        ),
    )
    tts = persona_tts(persona, runtime)
    voice = runtime.piper(persona) if persona.tts.engine == "piper" else None
    turns = turn_taker(
        persona,
        runtime,
        on_stt=tracer.note_stt,
        hold=getattr(transport.output(), "hold", None),
        # A prefill must not delay a reply: neither the call's LLM server nor the
        # voice may have work (the voice's syntheses need the cores a Whisper run takes).
        reply_engines_idle=lambda: backend.idle and (voice is None or voice.idle),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            turns,
            *dtmf_processors(persona),
            user_aggregator,
            llm,
            ChunkerProcessor(
                min_first_words=persona.chunking.min_first_words,
                max_wait_ms=persona.chunking.max_wait_ms,
                max_wait_min_words=persona.chunking.max_wait_min_words,
                max_chars=persona.chunking.max_chars,
                speech_chars_per_sec=persona.chunking.speech_chars_per_sec,
                runway_lead_ms=persona.chunking.runway_lead_ms,
                slow_first_words=persona.chunking.slow_first_words,
            ),
            tts,
            SpeculativeAudioGate(),
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
            # Token counts (and prefix-cache hits) of each completion, for traces.
            enable_usage_metrics=True,
        ),
        observers=[tracer],
        # A backstop behind the idle line and goodbye: a call in which nothing at
        # all happens (no audio either way) ends.
        idle_timeout_secs=first_idle + persona.limits.idle_timeout_secs + 30.0,
        enable_rtvi=False,
    )
    apologise_on_failure(worker, persona, failing=(turns, llm))
    count_errors(worker, runtime.errors, {"stt": turns, "llm": llm, "tts": tts})
    handle_idle_callers(worker, user_aggregator, persona, control, turns)
    if persona.greeting:
        greeting = persona_line(persona, "greeting", persona.greeting)

        @worker.event_handler("on_pipeline_started")
        async def _greet(worker: PipelineWorker, frame):
            await worker.queue_frame(greeting)

    if isinstance(control, PipelineCallControl):
        control.worker = worker
    return Call(worker=worker, context=context, tracer=tracer, persona=persona)
