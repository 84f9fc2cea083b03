"""Under a running ``voxline serve``: readiness means a call would be taken and answered.

The server runs the real embedded llama.cpp server, Whisper and Piper, with
``max_calls: 1``. The test kills the llama.cpp server's process by its pid:
``/health/ready`` turns 503 and names it, the supervisor restarts it, readiness
turns 200 again, and a later phone call (a Twilio-protocol caller) is answered.
During that call the process is full, so readiness is 503; after it, 200.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import textwrap
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.servers import ServerProcess, start_rest_standin, start_voxline
from tests.speech import caller_voice
from voxline.engines.llm import free_port
from voxline.transports.twilio_caller import TwilioCaller

pytestmark = pytest.mark.slow

AUTH_TOKEN = "test-auth-token-0123456789"


@pytest.fixture(scope="module")
def serve(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("supervision")
    rest, rest_url = start_rest_standin(tmp / "rest.jsonl")
    (tmp / "desk.yaml").write_text(
        textwrap.dedent(
            """\
            name: desk
            prompt: You are the front desk of a small shop. Answer in one short sentence.
            greeting: Hello, front desk.
            """
        )
    )
    port = free_port()
    config = tmp / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: desk.yaml
            max_calls: 1
            log_content: true  # the tests read what the bot said from the log
            engines:
              llm: {{backend: llama_cpp}}
            twilio:
              rest_base_url: {rest_url}
            """
        )
    )
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
    }
    server = start_voxline(config, env, port)
    yield {"url": f"http://127.0.0.1:{port}", "server": server}
    code = server.stop()
    rest.stop()
    assert code == 0, server.output[-3000:]  # SIGTERM with no call left: drained at once


def llama_pids(server: ServerProcess) -> list[int]:
    """The llama.cpp server's pids, in start order (the start line is logged and printed)."""
    found = re.findall(r"llama\.cpp server pid (\d+) starting", server.output)
    return [int(pid) for pid in dict.fromkeys(found)]


async def readiness(client: httpx.AsyncClient, url: str) -> tuple[int, dict]:
    response = await client.get(url + "/health/ready")
    return response.status_code, response.json()


async def wait_for_status(url: str, status: int, timeout: float) -> dict:
    """Poll readiness (4 a second, within the server's request budget) until ``status``."""
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + timeout
        while True:
            code, body = await readiness(client, url)
            if code == status:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"readiness stayed {code} {body}, expected {status}")
            await asyncio.sleep(0.25)


def test_a_killed_llm_server_turns_readiness_503_until_it_is_restarted(serve):
    url, server = serve["url"], serve["server"]
    body = asyncio.run(wait_for_status(url, 200, 30))
    assert body["ready"] and body["problems"] == []
    [pid] = llama_pids(server)

    os.kill(pid, signal.SIGKILL)
    down = asyncio.run(wait_for_status(url, 503, 10))
    assert any("llama.cpp server" in problem for problem in down["problems"]), down
    up = asyncio.run(wait_for_status(url, 200, 120))
    assert up["problems"] == []
    pids = llama_pids(server)
    assert len(pids) == 2 and pids[0] == pid and pids[1] != pid, pids
    assert f"llama.cpp server pid {pid} exited with code -9; restarting it" in server.output
    assert "llama.cpp server restarted (restart 1)" in server.output
    # Live and ready are different questions: live never failed.
    assert httpx.get(url + "/health/live", timeout=5).status_code == 200


def test_a_later_call_is_answered_and_the_full_process_is_not_ready(serve):
    url, server = serve["url"], serve["server"]
    asyncio.run(wait_for_status(url, 200, 120))
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all("What time do you open tomorrow?"), np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    seen_during: list[tuple[int, dict]] = []

    async def call_and_probe():
        dialer = TwilioCaller(url, auth_token=AUTH_TOKEN)
        call = asyncio.create_task(dialer.call(audio, voice.sample_rate, timeout=120))
        async with httpx.AsyncClient(timeout=5) as client:
            while not call.done():
                seen_during.append(await readiness(client, url))
                await asyncio.wait({call}, timeout=0.5)
        return await call

    result = asyncio.run(call_and_probe())
    assert result.turns and result.turns[0].bot_start is not None, "the caller heard no reply"
    full = [body for code, body in seen_during if code == 503]
    assert full and all("full: 1 of 1 calls" in body["problems"] for body in full), seen_during
    asyncio.run(wait_for_status(url, 200, 30))

    turns = [
        json.loads(line.split(" - turn ", 1)[1]) for line in server.lines if " - turn {" in line
    ]
    assert turns and turns[-1]["error"] is None and turns[-1]["bot"], turns
