"""``GET /metrics`` only renders: the LLM server's counters are read in the background.

The voxline app runs under uvicorn on loopback with its real engines; its
persona's LLM is an OpenAI-compatible stand-in on loopback that answers vLLM's
``/metrics`` (prefix-cache counters) and counts how often it is asked. Scrapes of
voxline's ``/metrics`` must not reach it, and no series may name its URL.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.engine_config import DEFAULT_MAX_CONCURRENT
from voxline.engines.llm import free_port
from voxline.personas import Persona
from voxline.server.app import create_app

INTERVAL = 2.0
SCRAPES = 20


class VLLMStandIn:
    """Answers the health check, the prompt warm-up and vLLM's ``/metrics``; counts those."""

    def __init__(self) -> None:
        self.port = free_port()
        self.metrics_requests = 0
        self.queries, self.hits = 1000.0, 750.0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def models(_request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "smollm2"}]})

        async def completions(_request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "id": "warm", "object": "chat.completion", "created": 0, "model": "smollm2",
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "Hi"}}],
                }
            )  # fmt: skip

        async def metrics(_request: web.Request) -> web.Response:
            self.metrics_requests += 1
            # As vLLM's prometheus_client writes its counters.
            text = "".join(
                f"# HELP vllm:prefix_cache_{name}_total Prefix cache {name}, in tokens.\n"
                f"# TYPE vllm:prefix_cache_{name}_total counter\n"
                f'vllm:prefix_cache_{name}_total{{model_name="smollm2"}} {value}\n'
                for name, value in (("queries", self.queries), ("hits", self.hits))
            )
            return web.Response(text=text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_get("/metrics", metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[dict]:
    llm = VLLMStandIn()
    await llm.start()
    persona = Persona(
        name="desk",
        prompt="You are a front desk.",
        llm={"base_url": llm.url, "model": "smollm2"},
        turn={"model": "none"},
    )
    config = ServerConfig(max_calls=1, health={"check_interval_secs": INTERVAL})
    app = create_app(config, {tmp_path / "desk.yaml": persona}, Runtime(config))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "llm": llm}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
        await llm.stop()


def hit_ratio(text: str) -> tuple[dict[str, str], float] | None:
    for family in text_string_to_metric_families(text):
        if family.name == "voxline_llm_prefix_cache_hit_ratio":
            for sample in family.samples:
                return sample.labels, sample.value
    return None


async def wait_for_ratio(client: httpx.AsyncClient, url: str, value: float) -> dict[str, str]:
    deadline = time.monotonic() + 3 * INTERVAL + 2
    while True:
        found = hit_ratio((await client.get(url + "/metrics")).text)
        if found is not None and found[1] == pytest.approx(value):
            return found[0]
        assert time.monotonic() < deadline, f"the hit ratio never became {value}: {found}"
        await asyncio.sleep(0.1)


async def test_metrics_scrapes_do_not_reach_the_llm_server_and_name_no_url(served):
    url, llm = served["url"], served["llm"]
    async with httpx.AsyncClient(timeout=10) as client:
        # The counters were read in the background once the server started.
        labels = await wait_for_ratio(client, url, 0.75)
        assert labels == {"kind": "external", "model": "smollm2", "personas": "desk"}
        # An external server's room is unknown: the client's default cap.
        page = (await client.get(url + "/metrics")).text
        slots = re.search(r'voxline_llm_slots\{kind="external",[^}]*\} (\S+)', page)
        assert slots and float(slots.group(1)) == DEFAULT_MAX_CONCURRENT, page

        before, started = llm.metrics_requests, time.monotonic()
        pages = [(await client.get(url + "/metrics")).text for _ in range(SCRAPES)]
        elapsed = time.monotonic() - started
        during = llm.metrics_requests - before
        allowed = int(elapsed / INTERVAL) + 1  # the background refreshes in that time
        print(f"\n{SCRAPES} scrapes in {elapsed:.2f} s; the LLM server was asked {during} times")
        assert allowed < SCRAPES, "too slow to tell scrapes from refreshes"
        assert during <= allowed, (during, elapsed)

        # No series names the server by URL, host or port.
        for page in pages:
            for family in text_string_to_metric_families(page):
                for sample in family.samples:
                    for value in sample.labels.values():
                        assert "://" not in value and str(llm.port) not in value, sample
        assert not re.search(r"127\.0\.0\.1|http", pages[-1]), pages[-1]

        # The refresh goes on without any scrape asking for it.
        llm.hits = 900.0
        await wait_for_ratio(client, url, 0.9)
