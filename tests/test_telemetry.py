"""Tracing and metrics settings, and a call's events turned into spans and series.

No server here (tests/test_observability.py makes a real call): the call hub's
listeners are fed a call whose turn is still in progress when the caller hangs
up, spans go to the SDK's in-memory exporter, and series to a registry.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import VOXLINE
from voxline.bot.call_events import CallInfo
from voxline.config import ServerConfig, TelemetryConfig
from voxline.personas import Persona
from voxline.processors.turn_trace import TurnTrace
from voxline.server.call_metrics import CallMetrics, end_reason_label
from voxline.server.metrics import MetricsToken
from voxline.server.telemetry import (
    TelemetryUnavailable,
    check_available,
    start_tracing,
    traces_endpoint,
)

MS = 1_000_000


def test_the_endpoint_comes_from_the_config_then_the_standard_variables():
    off = TelemetryConfig()
    assert traces_endpoint(off, {}) is None
    assert traces_endpoint(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    whole = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "y",
    }
    assert traces_endpoint(off, whole) == "http://c:4318/x"
    on = TelemetryConfig(otlp_endpoint="https://lf.example/api/public/otel")
    assert traces_endpoint(on, whole) == "https://lf.example/api/public/otel/v1/traces"
    assert traces_endpoint(on, {"OTEL_SDK_DISABLED": "true"}) is None


def test_an_endpoint_in_voxline_yaml_must_be_a_url():
    with pytest.raises(ValueError, match="otlp_endpoint"):
        ServerConfig.model_validate({"telemetry": {"otlp_endpoint": "localhost:4318"}})
    with pytest.raises(ValueError, match="otlp_endpoint"):
        ServerConfig.model_validate({"telemetry": {"otlp_endpoint": "http://a b"}})


def test_tracing_asked_for_without_the_sdk_names_the_extra(monkeypatch):
    config = TelemetryConfig(otlp_endpoint="http://127.0.0.1:4318")
    check_available(config)  # installed here
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(TelemetryUnavailable, match=r"otlp_endpoint .*voxline\[otel\]"):
        check_available(config)
    with pytest.raises(TelemetryUnavailable):
        start_tracing(config, {})
    # The standard variable alone (perhaps set for other programs): a warning, no traces.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    check_available(TelemetryConfig())
    assert start_tracing(TelemetryConfig(), {}) is None


def test_the_metrics_token_is_a_bearer_token():
    assert MetricsToken().allows(None)
    token = MetricsToken("s3cret-token")
    assert token.allows("Bearer s3cret-token") and token.allows("bearer s3cret-token")
    for refused in (None, "", "Bearer", "Bearer s3cret", "Basic s3cret-token", "s3cret-token"):
        assert not token.allows(refused), refused


def test_end_reasons_become_few_labels():
    assert end_reason_label("caller hung up") == "caller_hung_up"
    assert end_reason_label("browser vanished (ICE failed)") == "connection_lost"
    assert end_reason_label("the bot ended the call") == "bot_ended"
    assert end_reason_label("fatal error: boom 1234") == "error"
    assert end_reason_label("call 8812 did something new") == "other"
    assert end_reason_label(None) == "ended"


def answered_turn() -> TurnTrace:
    turn = TurnTrace(index=1, caller_text="where is my parcel", bot_text="It is on its way.")
    turn.speech_end, turn.stt_request, turn.transcribed = 1000 * MS, 1100 * MS, 1250 * MS
    turn.llm_first_token, turn.first_chunk, turn.tts_first_audio = 1500 * MS, 1550 * MS, 1700 * MS
    turn.committed, turn.audio_out, turn.llm_done_at = 1300 * MS, 1720 * MS, 1900 * MS
    turn.ended, turn.complete, turn.commit_reason = 3000 * MS, True, "model"
    turn.stt_batch_size, turn.stt_queue_wait_ms = 2, 12.5
    turn.llm_usage = {"prompt_tokens": 900, "completion_tokens": 9, "cached_tokens": 880}
    turn.tool_calls = [{"name": "track", "arguments": {"ref": "Z-1"}, "result": {"error": "x"}}]
    turn.tool_times = [(1510 * MS, 1530 * MS)]
    return turn


def unfinished_turn() -> TurnTrace:
    turn = TurnTrace(index=2, caller_text="and my other parcel")
    turn.speech_end, turn.stt_request, turn.transcribed = 5000 * MS, 5100 * MS, 5200 * MS
    return turn


def test_a_call_with_an_unfinished_turn_is_one_trace_and_moves_the_series():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    persona = Persona(name="desk", prompt="You are a front desk.")
    telemetry = start_tracing(TelemetryConfig(), {"desk": persona}, exporter=exporter)
    assert telemetry is not None
    registry, errors = CollectorRegistry(), Counter()
    metrics = CallMetrics(registry, errors)
    info = CallInfo(persona="desk", transport="twilio", call_sid="CA123")
    info.clock_origin_ns = time.time_ns()
    for listener in (telemetry.listener, metrics):
        listener.call_started(info)
    assert info.trace_id is not None and len(info.trace_id) == 32
    for listener in (telemetry.listener, metrics):
        listener.turn_finished(info, answered_turn())
    from datetime import UTC, datetime

    info.ended_at = datetime.fromtimestamp((info.clock_origin_ns + 6000 * MS) / 1e9, UTC)
    for listener in (telemetry.listener, metrics):
        listener.call_ended(info, "caller hung up", unfinished_turn())
    telemetry.shutdown()

    spans = exporter.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in spans} == {info.trace_id}
    [root] = [span for span in spans if span.name == "conversation"]
    turns = sorted(
        (s for s in spans if s.name == "turn"), key=lambda s: s.attributes["turn.number"]
    )
    assert [turn.attributes["voxline.turn.complete"] for turn in turns] == [True, False]
    assert all(turn.parent.span_id == root.context.span_id for turn in turns)
    assert root.end_time == int(info.ended_at.timestamp() * 1e9)
    assert turns[1].end_time == root.end_time  # the unfinished turn lasts until the hang-up

    first = {s.name: s for s in spans if s.parent and s.parent.span_id == turns[0].context.span_id}
    assert set(first) == {"vad", "end_of_turn", "stt", "llm", "tts", "tool_call"}
    assert first["stt"].end_time - first["stt"].start_time == 150 * MS
    assert first["stt"].attributes["voxline.stt.batch_size"] == 2
    assert first["llm"].attributes["metrics.ttfb"] == pytest.approx(0.25)
    assert first["llm"].attributes["gen_ai.usage.cache_read.input_tokens"] == 880
    assert first["tool_call"].attributes["tool.result_status"] == "error"
    for span in spans:  # nothing the caller said, no tool arguments
        assert not {"transcript", "output", "tool.arguments", "tool.result"} & set(span.attributes)
    second = {s.name for s in spans if s.parent and s.parent.span_id == turns[1].context.span_id}
    assert {"vad", "stt"} <= second and "llm" not in second

    series = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    turns_total = {
        labels: value for (name, labels), value in series.items() if name == "voxline_turns_total"
    }
    assert turns_total == {
        (("outcome", "answered"), ("persona", "desk")): 1,
        (("outcome", "unfinished"), ("persona", "desk")): 1,
    }
    stt = (("persona", "desk"), ("stage", "stt"))
    assert series[("voxline_turn_stage_seconds_count", stt)] == 2
    ended = (("persona", "desk"), ("reason", "caller_hung_up"), ("transport", "twilio"))
    assert series[("voxline_calls_ended_total", ended)] == 1
    assert errors == {"tool": 1}


def test_serve_refuses_to_start_when_voxline_yaml_asks_for_traces_it_cannot_send(
    tmp_path, voxline_env
):
    """Exit 2 and one line naming the extra, before any engine loads."""
    hide = tmp_path / "hide"
    hide.mkdir()
    # As if the otel extra were not installed: the SDK cannot be imported.
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['opentelemetry.sdk'] = None\n"
        "sys.modules['opentelemetry.sdk.trace'] = None\n"
    )
    (tmp_path / "voxline.yaml").write_text(
        "default_persona: desk.yaml\ntelemetry: {otlp_endpoint: 'http://127.0.0.1:4318'}\n"
    )
    (tmp_path / "desk.yaml").write_text("name: desk\nprompt: You are a front desk.\n")
    env = {**voxline_env, "PYTHONPATH": str(hide)}
    done = subprocess.run(
        [VOXLINE, "serve", "--config", str(tmp_path / "voxline.yaml"), "--port", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("voxline: error:")]
    assert len(errors) == 1 and "voxline[otel]" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_audio_underruns_are_counted_with_their_seconds_per_persona_and_transport():
    registry = CollectorRegistry()
    metrics = CallMetrics(registry, Counter())
    info = CallInfo(persona="desk", transport="twilio", call_sid="CA123")
    labels = {"persona": "desk", "transport": "twilio"}
    metrics.call_started(info)  # a call with none shows 0, not a missing series
    assert registry.get_sample_value("voxline_audio_underruns_total", labels) == 0
    metrics.audio_underrun(info, 0.25)
    metrics.audio_underrun(info, 0.07)
    assert registry.get_sample_value("voxline_audio_underruns_total", labels) == 2
    seconds = registry.get_sample_value("voxline_audio_underrun_seconds_total", labels)
    assert seconds == pytest.approx(0.32)
