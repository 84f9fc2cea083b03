"""OpenTelemetry traces: one trace per call, a span per turn, a child span per stage.

Off unless an OTLP endpoint is configured: ``telemetry.otlp_endpoint`` in
``voxline.yaml``, or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` environment variables. The OpenTelemetry SDK and
its OTLP/HTTP exporter come with the ``otel`` extra and are imported only when
tracing is on.

:class:`CallTracing` is a listener on the Runtime's call events
(:mod:`voxline.bot.call_events`). At ``call_started`` it opens the call's root
span and writes its trace id into the :class:`~voxline.bot.call_events.CallInfo`,
so the call's records and log lines carry it. Spans of a turn are built when the
turn is over, from the :class:`~voxline.processors.latency.TurnTrace`'s
timestamps (explicit start and end times): nothing on the audio path waits for
tracing, and the SDK's batch processor exports from its own thread, its queue
bounded (spans beyond it are dropped and counted by the SDK, never queued without end).

Names follow pipecat's own tracing where it has them, so dashboards built for
pipecat (Langfuse, Jaeger) read these spans: ``conversation`` → ``turn`` →
``stt`` / ``llm`` / ``tts``, with ``gen_ai.*`` attributes and ``metrics.ttfb``
(seconds); tool calls are ``tool_call`` spans with ``tool.function_name``. What
the caller and the bot said, and tool arguments and results, are attributes only
with ``log_content`` (as in the logs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from voxline import logcontent
from voxline.bot.call_events import CallInfo, CallListener
from voxline.config import TelemetryConfig
from voxline.personas import Persona
from voxline.processors.turn_trace import TurnTrace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

TRACES_PATH = "/v1/traces"
INSTALL_HINT = "pip install 'voxline[otel]' (or scripts/install.sh --otel)"


class TelemetryUnavailable(RuntimeError):
    """Tracing is asked for but the OpenTelemetry SDK or exporter is not installed."""


def traces_endpoint(config: TelemetryConfig, environ: dict[str, str] | None = None) -> str | None:
    """Where spans are sent (OTLP/HTTP), or None when tracing is off.

    ``telemetry.otlp_endpoint`` first, then ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    (used as is), then ``$OTEL_EXPORTER_OTLP_ENDPOINT``; a base URL gets
    ``/v1/traces`` appended, as the OpenTelemetry exporters do.
    ``$OTEL_SDK_DISABLED=true`` turns tracing off whatever is set.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if config.otlp_endpoint:
        return config.otlp_endpoint.rstrip("/") + TRACES_PATH
    if traces := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return base.rstrip("/") + TRACES_PATH
    return None


def _missing_package() -> str | None:
    """The OpenTelemetry module that cannot be imported, or None when all can."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return exc.name or "opentelemetry"
    return None


def check_available(config: TelemetryConfig) -> None:
    """Fail at start when ``voxline.yaml`` asks for traces but the packages are missing.

    Only the config's own ``otlp_endpoint`` makes this fail: the standard variables
    may be set for other programs, so with them alone :func:`start_tracing` warns and
    runs without traces.

    Raises:
        TelemetryUnavailable: one line naming what to install.
    """
    if config.otlp_endpoint is None or traces_endpoint(config) is None:
        return
    if (missing := _missing_package()) is not None:
        raise TelemetryUnavailable(
            f"telemetry.otlp_endpoint is set but OpenTelemetry is not installed "
            f"({missing}): {INSTALL_HINT}"
        )


def _shown(url: str) -> str:
    """A URL for the log: without any user name or password in it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class Telemetry:
    """A running trace exporter: its provider (to flush at exit) and the call listener."""

    provider: TracerProvider
    listener: CallTracing
    endpoint: str

    def shutdown(self) -> None:
        """Export what is queued and stop (blocking, bounded by the SDK's timeouts)."""
        self.provider.shutdown()


def start_tracing(
    config: TelemetryConfig, personas: dict[str, Persona], *, exporter: Any | None = None
) -> Telemetry | None:
    """Set up the exporter when an endpoint is configured (or ``exporter`` is given).

    The provider is voxline's own, not the process-global one, so nothing else in
    the process (pipecat's own tracing, a library) sends spans through it.

    Args:
        config: the ``telemetry`` section.
        personas: the server's personas by name (their models name the spans' models).
        exporter: a span exporter to use instead of OTLP/HTTP (tests: in-memory).

    Raises:
        TelemetryUnavailable: an endpoint is configured but the packages are missing.
    """
    endpoint = traces_endpoint(config)
    if endpoint is None and exporter is None:
        return None
    check_available(config)
    if (missing := _missing_package()) is not None:
        logger.warning(
            f"tracing: an OTLP endpoint is set in the environment but OpenTelemetry is not "
            f"installed ({missing}): no traces; {INSTALL_HINT}"
        )
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)  # headers: $OTEL_EXPORTER_OTLP_HEADERS
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=config.max_queued_spans)
    )
    tracer = provider.get_tracer("voxline")
    where = _shown(endpoint) if endpoint else type(exporter).__name__
    logger.info(f"tracing: spans go to {where} as service {config.service_name}")
    return Telemetry(provider, CallTracing(tracer, personas), where)


def _ns(info: CallInfo, clock_ns: int | None) -> int | None:
    """A pipeline-clock time as epoch nanoseconds (None if unknown)."""
    if clock_ns is None or info.clock_origin_ns is None:
        return None
    return info.clock_origin_ns + clock_ns


def _secs(start: int | None, end: int | None) -> float | None:
    return None if start is None or end is None else round((end - start) / 1e9, 4)


class CallTracing(CallListener):
    """Builds each call's trace from its events (a :class:`CallListener`).

    Args:
        tracer: voxline's tracer (from :func:`start_tracing`).
        personas: the server's personas by name.
    """

    def __init__(self, tracer: Tracer, personas: dict[str, Persona]):
        self._tracer = tracer
        self._personas = personas
        self._calls: dict[str, Span] = {}  # one open root span per live call

    def call_started(self, info: CallInfo) -> None:
        """Open the call's ``conversation`` span; its trace id goes into ``info``."""
        span = self._tracer.start_span(
            "conversation",
            start_time=int(info.started_at.timestamp() * 1e9),
            attributes={
                "conversation.id": info.call_id,
                "conversation.type": "voice",
                "voxline.persona": info.persona,
                "voxline.transport": info.transport,
                **({"voxline.call_sid": info.call_sid} if info.call_sid else {}),
            },
        )
        self._calls[info.call_id] = span
        info.trace_id = format(span.get_span_context().trace_id, "032x")

    def turn_finished(self, info: CallInfo, turn: TurnTrace) -> None:
        """Export the turn's span and its stage spans."""
        self._turn(info, turn, ended_ns=_ns(info, turn.ended))

    def call_ended(self, info: CallInfo, reason: str, unfinished: TurnTrace | None) -> None:
        """Export the unfinished turn, if any, and close the call's span."""
        span = self._calls.pop(info.call_id, None)
        if span is None:
            return
        ended_ns = int(info.ended_at.timestamp() * 1e9) if info.ended_at else None
        if unfinished is not None:
            self._turn(info, unfinished, ended_ns=ended_ns, parent=span)
        span.set_attribute("voxline.end_reason", reason)
        span.end(end_time=ended_ns)

    def _turn(
        self, info: CallInfo, turn: TurnTrace, *, ended_ns: int | None, parent: Span | None = None
    ) -> None:
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        parent = parent or self._calls.get(info.call_id)
        if parent is None or info.clock_origin_ns is None:
            return
        marks = [
            turn.speech_end, turn.stt_request, turn.transcribed, turn.llm_first_token,
            turn.first_chunk, turn.tts_first_audio, turn.audio_out, turn.ended,
        ]  # fmt: skip
        known = [mark for mark in marks if mark is not None]
        if not known:
            return
        start = _ns(info, min(known))
        end = ended_ns or _ns(info, max(known))
        latencies = turn.latencies_ms()
        attributes: dict[str, Any] = {
            "turn.number": turn.index,
            "turn.type": "conversation",
            "conversation.id": info.call_id,
            "turn.was_interrupted": turn.interrupted,
            "voxline.turn.complete": turn.complete,
            "voxline.turn.speculative_starts": turn.speculative_starts,
        }
        if start is not None and end is not None:
            attributes["turn.duration_seconds"] = round((end - start) / 1e9, 4)
        if (v2v := latencies["voice_to_voice"]) is not None:
            attributes["turn.user_bot_latency_seconds"] = v2v / 1000
        for stage, millis in latencies.items():
            if millis is not None:
                attributes[f"voxline.latency_ms.{stage}"] = millis
        if turn.commit_reason:
            attributes["voxline.turn.commit_reason"] = turn.commit_reason
        span = self._tracer.start_span(
            "turn", context=set_span_in_context(parent), start_time=start, attributes=attributes
        )
        if turn.error is not None:
            span.set_status(Status(StatusCode.ERROR, turn.error[:200]))
        context = set_span_in_context(span)
        for name, begin, finish, stage_attributes in self._stages(info, turn):
            if begin is None or finish is None:
                continue
            child = self._tracer.start_span(
                name, context=context, start_time=begin, attributes=stage_attributes
            )
            child.end(end_time=max(begin, finish))
        span.end(end_time=end)

    def _stages(
        self, info: CallInfo, turn: TurnTrace
    ) -> list[tuple[str, int | None, int | None, dict[str, Any]]]:
        """Each stage span: name, start and end (epoch ns), attributes."""
        persona = self._personas.get(info.persona)
        content = logcontent.enabled()
        t = lambda clock_ns: _ns(info, clock_ns)  # noqa: E731
        stages: list[tuple[str, int | None, int | None, dict[str, Any]]] = []

        # The caller went quiet -> the VAD's early pause sent the audio to STT.
        stages.append(("vad", t(turn.speech_end), t(turn.stt_request), {}))
        commit: dict[str, Any] = {
            "end_of_turn.reason": turn.commit_reason or "",
            "end_of_turn.decisions": len(turn.decisions),
            "end_of_turn.cancellations": len(turn.cancellations),
        }
        if turn.decisions:
            commit["end_of_turn.last_probability"] = float(turn.decisions[-1].get("p") or 0.0)
        stages.append(("end_of_turn", t(turn.speech_end), t(turn.committed), commit))

        stt: dict[str, Any] = {
            "gen_ai.provider.name": "whisper",
            "gen_ai.operation.name": "stt",
            "vad_enabled": True,
        }
        if persona is not None:
            stt["gen_ai.request.model"] = persona.stt.model
            stt["language"] = persona.language or ""
        if (ttfb := _secs(turn.stt_request, turn.transcribed)) is not None:
            stt["metrics.ttfb"] = ttfb
        if turn.stt_batch_size is not None:
            stt["voxline.stt.batch_size"] = turn.stt_batch_size
        if turn.stt_queue_wait_ms is not None:
            stt["voxline.stt.queue_wait_ms"] = turn.stt_queue_wait_ms
        if content:
            stt["transcript"] = turn.caller_text
        stages.append(("stt", t(turn.stt_request), t(turn.transcribed), stt))

        llm: dict[str, Any] = {
            "gen_ai.provider.name": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.output.type": "text",
            "stream": True,
        }
        if persona is not None:
            llm["gen_ai.request.model"] = persona.llm.model
        if (ttfb := _secs(turn.transcribed, turn.llm_first_token)) is not None:
            llm["metrics.ttfb"] = ttfb
        usage = turn.llm_usage
        if "prompt_tokens" in usage:
            llm["gen_ai.usage.input_tokens"] = usage["prompt_tokens"]
        if "completion_tokens" in usage:
            llm["gen_ai.usage.output_tokens"] = usage["completion_tokens"]
        if "cached_tokens" in usage:
            llm["gen_ai.usage.cache_read.input_tokens"] = usage["cached_tokens"]
        if content:
            llm["output"] = turn.bot_text.strip()
        llm_end = turn.llm_done_at or turn.first_chunk or turn.llm_first_token
        stages.append(("llm", t(turn.transcribed), t(llm_end), llm))

        tts: dict[str, Any] = {
            "gen_ai.operation.name": "tts",
            "gen_ai.output.type": "speech",
        }
        if persona is not None:
            piper = persona.tts.engine == "piper"
            tts["gen_ai.provider.name"] = persona.tts.engine
            tts["gen_ai.request.model"] = persona.tts.voice if piper else persona.tts.model
            tts["voice_id"] = persona.tts.voice or ""
        if (ttfb := _secs(turn.first_chunk, turn.tts_first_audio)) is not None:
            tts["metrics.ttfb"] = ttfb
        stages.append(("tts", t(turn.first_chunk), t(turn.tts_first_audio), tts))

        for call, (started, returned) in zip(turn.tool_calls, turn.tool_times, strict=False):
            result = call.get("result")
            failed = isinstance(result, dict) and "error" in result
            tool: dict[str, Any] = {
                "tool.function_name": str(call.get("name")),
                "tool.result_status": "error" if failed else "completed",
            }
            if content:
                tool["tool.arguments"] = json.dumps(call.get("arguments"), default=str)[:1000]
                tool["tool.result"] = json.dumps(result, default=str)[:2000]
            stages.append(("tool_call", t(started if started is not None else returned),
                           t(returned), tool))  # fmt: skip
        return stages
