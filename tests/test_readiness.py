"""``/health/ready`` says whether a call would be taken and answered now.

The voxline app runs under uvicorn on loopback with its real engines; its
persona's LLM is an OpenAI-compatible server on loopback that the test stops and
starts again. Readiness follows it within the background check's interval, and
is also 503 while the process is full or draining (when a browser's new offer is
refused too); ``/health/live`` stays 200.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from aiohttp import web
from aiortc import RTCPeerConnection

from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.engines.llm import free_port
from voxline.personas import Persona
from voxline.server.app import create_app

INTERVAL = 0.5
TIMEOUT = 1.0
BUSY_LIMIT = 3.0


class LoopbackLLM:
    """Answers the health check and the prompt warm-up; can be stopped and started."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.late_secs = 0.0  # how long /v1/models takes: a server busy generating

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def models(_request: web.Request) -> web.Response:
            await asyncio.sleep(self.late_secs)  # the server's time to answer
            return web.json_response({"object": "list", "data": [{"id": "smollm2"}]})

        async def completions(_request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "id": "warm", "object": "chat.completion", "created": 0, "model": "smollm2",
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "Hi"}}],
                }
            )  # fmt: skip

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", completions)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[dict]:
    llm = LoopbackLLM()
    await llm.start()
    persona = Persona(
        name="desk",
        prompt="You are a front desk.",
        llm={"base_url": llm.url, "model": "smollm2"},
        turn={"model": "none"},
    )
    runtime = Runtime()
    config = ServerConfig(
        max_calls=1,
        health={
            "check_interval_secs": INTERVAL,
            "check_timeout_secs": TIMEOUT,
            "busy_limit_secs": BUSY_LIMIT,
        },
    )
    app = create_app(config, {tmp_path / "desk.yaml": persona}, runtime)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "llm": llm, "app": app}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
        await llm.stop()


async def wait_for_status(url: str, status: int, timeout: float) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + timeout
        while True:
            response = await client.get(url + "/health/ready")
            if response.status_code == status:
                return response.json()
            if time.monotonic() > deadline:
                raise AssertionError(f"readiness stayed {response.status_code} {response.text}")
            await asyncio.sleep(0.1)


async def test_readiness_follows_the_llm_server_capacity_and_draining(served):
    url, llm, app = served["url"], served["llm"], served["app"]
    assert (await wait_for_status(url, 200, 5))["problems"] == []

    await llm.stop()
    down = await wait_for_status(url, 503, 4 * INTERVAL + 2)
    assert any(f"LLM server at {llm.url} is not reachable" in p for p in down["problems"]), down
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(url + "/health/live")).status_code == 200
    await llm.start()
    assert (await wait_for_status(url, 200, 4 * INTERVAL + 2))["problems"] == []

    slot = app.state.phone.admission.try_take()
    assert slot is not None
    full = await wait_for_status(url, 503, 1)
    assert full["problems"] == ["full: 1 of 1 calls"] and full["calls"] == 1
    slot.release()
    await wait_for_status(url, 200, 1)

    app.state.drain.begin()  # what SIGTERM does under `voxline serve`
    draining = await wait_for_status(url, 503, 1)
    assert draining["problems"] == ["draining: no new calls"]
    assert app.state.phone.admission.try_take() is None  # and no new call is taken
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(url + "/health/live")).status_code == 200
        peer = RTCPeerConnection()  # a real offer: refused for the drain, not its SDP
        peer.addTransceiver("audio", direction="sendrecv")
        await peer.setLocalDescription(await peer.createOffer())
        offer = {"key": "demo", "type": "offer", "sdp": peer.localDescription.sdp}
        refused = await client.post(url + "/webrtc/offer", json=offer, headers={"Origin": url})
        await peer.close()
    assert refused.status_code == 503 and "closing" in refused.json()["error"], refused.text


async def test_a_late_server_is_busy_then_hung_and_a_refusing_one_down_at_once(served):
    url, llm = served["url"], served["llm"]
    assert (await wait_for_status(url, 200, 5))["problems"] == []

    llm.late_secs = TIMEOUT + 0.5  # answers, but after the check has given up
    late_from = time.monotonic()
    hung = await wait_for_status(url, 503, BUSY_LIMIT + 4 * INTERVAL + 2 * TIMEOUT + 2)
    assert time.monotonic() - late_from >= BUSY_LIMIT, "a busy server was reported at once"
    assert hung["problems"] == [
        f"LLM server at {llm.url} did not answer {llm.url}/v1/models within {TIMEOUT:g} s, "
        f"late for more than {BUSY_LIMIT:g} s"
    ], hung
    llm.late_secs = 0.0
    assert (await wait_for_status(url, 200, 4 * INTERVAL + 2 * TIMEOUT))["problems"] == []

    await llm.stop()  # a refused connection is no busy server
    refused_from = time.monotonic()
    await wait_for_status(url, 503, 4 * INTERVAL + 2)
    assert time.monotonic() - refused_from < BUSY_LIMIT
    await llm.start()
