"""A real phone call's traces and metrics.

``voxline serve`` (llama.cpp, Whisper, Piper on loopback) with a metrics token and
an OTLP endpoint: an OTLP/HTTP receiver in this process, on loopback, that decodes
what the server's exporter sends. One Twilio-protocol caller asks a question that
the persona answers with a Python tool. Then:

* ``/metrics`` answers 401 without the token (and with a wrong one), and with it
  parses with prometheus_client's parser; the stage histograms, the turn and tool
  counters and the ended-call counter moved with the call;
* the receiver got one trace for the call: a ``conversation`` root span, ``turn``
  spans under it and ``stt`` / ``llm`` / ``tts`` / ``tool_call`` spans under the
  turns, with pipecat's attribute names; the call's log lines carry its trace id.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import start_voxline
from tests.speech import caller_voice
from voxline.engines.llm import free_port
from voxline.transports.twilio_caller import TwilioCaller

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

AUTH_TOKEN = "test-auth-token-0123456789"
METRICS_TOKEN = "metrics-token-abcdef0123456789"
QUESTION = "Hi, where is my parcel? I posted it on Wednesday."
REFERENCE = "ZEBRA-4471-QUARTZ"

PERSONA = """\
name: parcels
prompt: You are the phone assistant of a parcel service. Look parcels up with track_parcel.
greeting: Hello, parcel desk.
tools: [track_parcel]
tools_dir: tools
llm: {tool_choice: track_parcel, max_tokens: 60}
"""
TOOL = f"""\
name: track_parcel
description: Where the caller's parcel is now.
parameters:
  type: object
  properties:
    reference: {{type: string, enum: [{REFERENCE}]}}
  required: [reference]
python: parcels:track_parcel
"""
HANDLER = """\
def track_parcel(reference: str) -> dict:
    return {"status": "waiting", "depot": "north"}
"""


class OTLPReceiver:
    """An OTLP/HTTP trace receiver on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []
        spans, lock = self.spans, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(scope.spans)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def attributes(span) -> dict[str, object]:
    values = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value"))
    return values


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(found: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


@pytest.fixture(scope="module")
def traced_call(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("observability")
    (tmp / "tools").mkdir()
    (tmp / "tools" / "track_parcel.yaml").write_text(TOOL)
    (tmp / "tools" / "parcels.py").write_text(HANDLER)
    (tmp / "parcels.yaml").write_text(PERSONA)
    port = free_port()
    (tmp / "voxline.yaml").write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: parcels.yaml
            engines:
              llm: {{backend: llama_cpp}}
            """
        )
    )
    receiver = OTLPReceiver()
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_METRICS_TOKEN": METRICS_TOKEN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
    }
    env.pop("VOXLINE_LOG_CONTENT", None)
    env.pop("OTEL_SDK_DISABLED", None)
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(QUESTION), dtype=np.int16)
    url = f"http://127.0.0.1:{port}"
    server = start_voxline(tmp / "voxline.yaml", env, port)
    try:
        dialer = TwilioCaller(url, auth_token=AUTH_TOKEN, caller_id="+15557654321")

        async def call() -> dict[str, str]:
            async with httpx.AsyncClient(timeout=10) as client:
                before = (await client.get(f"{url}/metrics", headers=bearer())).text
                await dialer.call(pcm.astype(np.float32) / 32768.0, voice.sample_rate, timeout=120)
                await wait_for_line(server.lines, f"call {dialer.call_sid} context")
                pages = {
                    "before": before,
                    "no token": await client.get(f"{url}/metrics"),
                    "wrong token": await client.get(
                        f"{url}/metrics", headers={"Authorization": "Bearer nope"}
                    ),
                    "after": (await client.get(f"{url}/metrics", headers=bearer())).text,
                }
                return pages

        pages = asyncio.run(call())
    finally:
        server.stop()  # SIGTERM: the exporter flushes its last spans
        receiver.stop()
    yield {"pages": pages, "spans": receiver.spans, "log": server.lines, "sid": dialer.call_sid}


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {METRICS_TOKEN}"}


async def wait_for_line(lines: list[str], needle: str, timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not any(needle in line for line in lines):
            await asyncio.sleep(0.1)  # polling the server's log, under a deadline

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.slow
def test_metrics_need_the_token_and_the_histograms_move_after_a_call(traced_call):
    pages = traced_call["pages"]
    for refused in ("no token", "wrong token"):
        response = pages[refused]
        assert response.status_code == 401, (refused, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
        assert "voxline_" not in response.text
    before, after = samples(pages["before"]), samples(pages["after"])
    print("\n" + "\n".join(line for line in pages["after"].splitlines() if "stage" in line))

    for stage in ("stt", "llm_first_token", "first_chunk", "tts_first_audio", "voice_to_voice"):
        count = "voxline_turn_stage_seconds_count"
        assert total(before, count, stage=stage) == 0, stage
        assert total(after, count, stage=stage, persona="parcels") >= 1, stage
        seconds = total(after, "voxline_turn_stage_seconds_sum", stage=stage)
        assert 0 < seconds < 60, (stage, seconds)
        inf = total(after, "voxline_turn_stage_seconds_bucket", stage=stage, le="+Inf")
        assert inf == total(after, count, stage=stage), stage
    assert total(after, "voxline_turns_total", persona="parcels") >= 1
    assert total(after, "voxline_tool_calls_total", persona="parcels", failed="false") >= 1
    ended = total(after, "voxline_calls_ended_total", persona="parcels", transport="twilio")
    assert ended == 1, pages["after"]
    assert total(after, "voxline_calls_ended_total", reason="caller_hung_up") == 1
    # Always present, with their labels, from the first scrape on.
    for kind in ("stt", "llm", "tts", "tool", "transport", "pipeline"):
        assert ("voxline_errors_total", (("kind", kind),)) in before, kind
    assert total(after, "voxline_errors_total") == 0, pages["after"]
    assert total(after, "voxline_whisper_refused_total", model="tiny.en") == 0
    assert ("voxline_whisper_decoded_again_total", (("model", "tiny.en"),)) in before
    rtf = total(after, "voxline_tts_real_time_factor", voice="en_US-joe-medium")
    assert 0 < rtf < 1, rtf
    assert total(after, "voxline_tts_audio_seconds_total") > 1.0
    # The call spoke the greeting whole: the voice keeps it for the next call.
    assert total(before, "voxline_tts_lines_kept", voice="en_US-joe-medium") == 0
    assert total(after, "voxline_tts_lines_kept", voice="en_US-joe-medium") >= 1
    assert total(after, "voxline_tts_remembered_lines_total", voice="en_US-joe-medium") == 0
    # The gauges from before are still there.
    for name in ("voxline_calls_active", "voxline_whisper_batch_size_mean"):
        assert total(after, name) >= 0 and any(key[0] == name for key in after), name


@pytest.mark.slow
def test_a_call_is_one_trace_with_turn_and_stage_spans(traced_call):
    spans = traced_call["spans"]
    names = [span.name for span in spans]
    print("\n", sorted(names))
    [root] = [span for span in spans if span.name == "conversation"]
    trace_id = root.trace_id.hex()
    assert all(span.trace_id == root.trace_id for span in spans), "one trace per call"
    root_attributes = attributes(root)
    assert root_attributes["voxline.persona"] == "parcels"
    assert root_attributes["voxline.call_sid"] == traced_call["sid"]
    assert root_attributes["voxline.end_reason"] == "caller hung up"

    by_id = {span.span_id: span for span in spans}
    turns = [span for span in spans if span.name == "turn"]
    assert turns and all(turn.parent_span_id == root.span_id for turn in turns)
    answered = [turn for turn in turns if attributes(turn).get("turn.user_bot_latency_seconds")]
    assert answered, [attributes(turn) for turn in turns]
    for span in spans:
        if span.name in ("stt", "llm", "tts", "tool_call", "vad", "end_of_turn"):
            parent = by_id[span.parent_span_id]
            assert parent.name == "turn", (span.name, parent.name)
            assert parent.start_time_unix_nano <= span.start_time_unix_nano
            assert span.start_time_unix_nano <= span.end_time_unix_nano
    children: dict[bytes, set[str]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, set()).add(span.name)
    assert any({"stt", "llm", "tts"} <= children.get(turn.span_id, set()) for turn in answered)

    [stt] = [span for span in spans if span.name == "stt"][:1]
    stt_attributes = attributes(stt)
    assert stt_attributes["gen_ai.operation.name"] == "stt"
    assert stt_attributes["gen_ai.request.model"] == "tiny.en"
    assert stt_attributes["metrics.ttfb"] > 0
    assert stt_attributes["voxline.stt.batch_size"] >= 1
    assert stt_attributes["voxline.stt.queue_wait_ms"] >= 0
    assert "transcript" not in stt_attributes  # no caller content without log_content
    llm = [attributes(span) for span in spans if span.name == "llm"]
    assert any(span.get("metrics.ttfb", 0) > 0 for span in llm), llm
    assert all(span["gen_ai.operation.name"] == "chat" for span in llm)
    tts = [attributes(span) for span in spans if span.name == "tts"]
    assert all(span["gen_ai.request.model"] == "en_US-joe-medium" for span in tts), tts
    # The question may be heard as two turns ("Hi, where is my parcel?" then the rest), and
    # each may look the parcel up: every tool span is track_parcel, without its arguments.
    tools = [attributes(span) for span in spans if span.name == "tool_call"]
    assert tools, names
    for tool in tools:
        assert tool["tool.function_name"] == "track_parcel" and "tool.arguments" not in tool

    # The call's log lines carry the trace id: its turn lines, for one.
    tagged = [line for line in traced_call["log"] if f" trace {trace_id}]" in line]
    assert any(" - turn {" in line for line in tagged), "\n".join(traced_call["log"][-30:])
    sid = traced_call["sid"]
    for end_line in (f"call {sid} ended", f"call {sid} context"):
        assert any(end_line in line for line in tagged), "\n".join(traced_call["log"][-30:])
