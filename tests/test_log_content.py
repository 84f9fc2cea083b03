"""What callers say stays out of the log unless ``log_content: true`` asks for it.

A real phone call to ``voxline serve`` (llama.cpp, Whisper, Piper on loopback),
with a persona whose LLM is made to call a Python tool: the caller's words, the
caller's number and the tool's arguments and result must not appear in the
server's log at INFO by default, and must appear with ``log_content: true``.
A failing HTTP tool whose URL holds a ``${ENV}`` secret, run through the call's
tool wiring against an endpoint that echoes what it was sent, never logs the
secret, with or without ``log_content``.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from loguru import logger
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.llm_service import FunctionCallParams

from tests.servers import ServerProcess, start_voxline
from tests.speech import caller_voice
from voxline import logcontent
from voxline.bot.call_control import PipelineCallControl
from voxline.bot.runtime import Runtime
from voxline.bot.tool_wiring import register_tools
from voxline.config import ServerConfig
from voxline.engines.llm import free_port
from voxline.personas import load_persona
from voxline.processors.llm import VoxlineLLMService
from voxline.transports.twilio_caller import TwilioCaller

AUTH_TOKEN = "test-auth-token-0123456789"
CALLER_NUMBER = "+15557654321"
QUESTION = "Hi, where is my parcel? I posted it on Wednesday."
CALLER_WORDS = ("wednesday", "posted")
REFERENCE = "ZEBRA-4471-QUARTZ"
DEPOT = "MARIGOLD-DEPOT-8812"
SECRET = "sk-live-0123456789abcdef"

PERSONA = """\
name: parcels
prompt: You are the phone assistant of a parcel service. Look parcels up with track_parcel.
greeting: Hello, parcel desk.
tools: [track_parcel]
tools_dir: tools
llm: {tool_choice: track_parcel, max_tokens: 80}
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
HANDLER = f"""\
import json, os

def track_parcel(reference: str) -> dict:
    with open(os.environ["PARCEL_LOG"], "a") as log:
        log.write(json.dumps({{"reference": reference}}) + "\\n")
    return {{"status": "waiting", "depot": "{DEPOT}"}}
"""


@pytest.fixture
def parcels(tmp_path: Path) -> Path:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "track_parcel.yaml").write_text(TOOL)
    (tmp_path / "tools" / "parcels.py").write_text(HANDLER)
    (tmp_path / "parcels.yaml").write_text(PERSONA)
    return tmp_path


def serve(tmp: Path, log_content: bool) -> tuple[ServerProcess, str]:
    port = free_port()
    config = tmp / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: parcels.yaml
            engines:
              llm: {{backend: llama_cpp}}
            """
        )
        + ("log_content: true\n" if log_content else "")
    )
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
        "PARCEL_LOG": str(tmp / "parcel.log"),
    }
    env.pop("VOXLINE_LOG_CONTENT", None)
    return start_voxline(config, env, port), f"http://127.0.0.1:{port}"


async def wait_for_line(server: ServerProcess, needle: str, timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not any(needle in line for line in server.lines):
            await asyncio.sleep(0.1)  # polling the server's log, under a deadline

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.slow
@pytest.mark.parametrize("log_content", [False, True], ids=["default", "log_content"])
def test_a_call_leaves_no_caller_content_in_the_log_unless_asked(parcels, log_content):
    voice = caller_voice()
    import numpy as np

    pcm = np.frombuffer(voice.synthesize_all(QUESTION), dtype=np.int16)
    server, url = serve(parcels, log_content)
    try:
        dialer = TwilioCaller(url, auth_token=AUTH_TOKEN, caller_id=CALLER_NUMBER)

        async def call() -> None:
            await dialer.call(pcm.astype(np.float32) / 32768.0, voice.sample_rate, timeout=120)
            await wait_for_line(server, f"call {dialer.call_sid} context")

        asyncio.run(call())
    finally:
        server.stop()
    log = server.output
    lines = log.splitlines()
    turns = [line for line in lines if " - turn {" in line]
    print("\n" + "\n".join(line for line in lines if "voxline." in line and "WARNING" in line))
    print("\n".join(line for line in lines if f"call {dialer.call_sid}" in line))
    print("\n".join(turns))
    # The call happened as the test means it: the tool ran with the argument it was made
    # to send, and the caller's turn was traced.
    tool_log = parcels / "parcel.log"
    calls = (
        [json.loads(line) for line in tool_log.read_text().splitlines()]
        if tool_log.exists()
        else []
    )
    assert calls and calls[0] == {"reference": REFERENCE}, calls
    assert turns, log[-3000:]

    content = {
        "the caller's number": CALLER_NUMBER in log,
        "the tool's argument": REFERENCE in log,
        "the tool's result": DEPOT in log,
        "the caller's words": any(word in log.lower() for word in CALLER_WORDS),
    }
    if log_content:
        assert all(content.values()), content
    else:
        assert not any(content.values()), content
        assert "+1555***4321" in log  # masked, the call is still traceable
        traces = [json.loads(turn.split(" - turn ", 1)[1]) for turn in turns]
        first = traces[0]
        assert first["caller"]["words"] > 0 and first["latency_ms"]["stt"] is not None, first
        # The tool runs in the turn that answered the question: the first, the next one
        # when the caller's audio carried on past a speculative reply, or both when
        # Whisper heard "Hi, where is my parcel?" and the rest as two turns. Each trace
        # names the tool and nothing of its arguments.
        tools = [trace["tools"] for trace in traces if trace["tools"]]
        assert tools, traces
        for called in tools:
            assert [tool["name"] for tool in called] == ["track_parcel"], traces
            assert all(set(tool) <= {"name", "failed"} for tool in called), traces


# --- a failing HTTP tool ------------------------------------------------------------------------


@pytest.fixture
async def echoing_api() -> Iterator[str]:
    """An API that refuses every request, echoing the URL and body it was sent."""

    async def refuse(request: web.Request) -> web.Response:
        body = await request.text()
        return web.Response(status=401, text=f"bad key for {request.path_qs}: {body}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("log_content", [False, True], ids=["default", "log_content"])
async def test_a_failing_http_tool_never_logs_its_secret(
    tmp_path, echoing_api, monkeypatch, log_content
):
    monkeypatch.setenv("TOOL_API", echoing_api)
    monkeypatch.setenv("TOOL_KEY", SECRET)
    monkeypatch.delenv("VOXLINE_LOG_CONTENT", raising=False)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "track_parcel.yaml").write_text(
        TOOL.replace(
            "python: parcels:track_parcel",
            'http: {url: "${TOOL_API}/v1/parcels?key=${TOOL_KEY}", method: POST}',
        )
    )
    (tmp_path / "parcels.yaml").write_text(PERSONA)
    persona = load_persona(tmp_path / "parcels.yaml")
    Runtime(ServerConfig(log_content=log_content))  # what serve and talk configure from
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        llm = VoxlineLLMService(api_key="x", base_url="http://127.0.0.1:9/v1")
        register_tools(llm, persona, PipelineCallControl("Bye."))
        results: list[dict] = []

        async def result_callback(result, properties=None):
            results.append(result)

        await llm._functions["track_parcel"].handler(
            FunctionCallParams(
                function_name="track_parcel", tool_call_id="1",
                arguments={"reference": REFERENCE}, llm=llm, context=LLMContext(),
                result_callback=result_callback, pipeline_worker=None,
            )
        )  # fmt: skip
    finally:
        logger.remove(sink)
        logcontent.configure(False)
    [result] = results
    print("\n" + "".join(lines))
    assert "answered HTTP 401" in result["error"], result
    failures = [line for line in lines if "tool track_parcel failed" in line]
    assert failures, lines
    assert not any(SECRET in line for line in lines), lines
    assert SECRET not in result["error"], result  # the LLM's context does not get it either
    assert (REFERENCE in "".join(failures)) is log_content, failures
