"""What making an HTTP client costs the event loop: its own TLS context vs the shared one.

voxline's server made an ``httpx.AsyncClient`` for every LLM/TTS health check and
vLLM prefix-cache scrape (each every 5 s), every HTTP tool call and, inside pipecat's
OpenAI service, every call's LLM client, all on the event loop that paces every
call's audio. Each builds a TLS context (reading the CA bundle) whatever URL it will
ask. ``voxline/engines/http_clients.py`` gives every client one context made once.

This times, on the event loop, the making (and closing) of each kind of client
``--repeat`` times, after one of each has been made (imports and the shared context
warm), and prints medians and p95s:

* ``httpx.AsyncClient()``: what the checks, scrapes and tool calls made;
* ``http_clients.async_client()``: what they make now;
* pipecat's ``OpenAILLMService.create_client``: what every call made;
* ``AsyncOpenAI`` on the shared context: what each LLM server's one client is now.

    .venv/bin/python -m benchmarks.http_clients              # ~10 s
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from openai import AsyncOpenAI, DefaultAsyncHttpxClient  # noqa: E402
from pipecat.services.openai.llm import OpenAILLMService  # noqa: E402

from benchmarks.common import p50, p95  # noqa: E402
from voxline.engines import http_clients  # noqa: E402

URL = "http://127.0.0.1:9/v1"


async def _httpx_own() -> None:
    await httpx.AsyncClient(timeout=5.0).aclose()


async def _httpx_shared() -> None:
    await http_clients.async_client(timeout=5.0).aclose()


async def _pipecat_per_call() -> None:
    # The method pipecat's OpenAILLMService.__init__ calls; unbound, as no service is needed.
    client = OpenAILLMService.create_client(None, api_key="x", base_url=URL)  # type: ignore[arg-type]
    await client.close()


async def _openai_shared() -> None:
    client = AsyncOpenAI(
        api_key="x",
        base_url=URL,
        max_retries=0,
        http_client=DefaultAsyncHttpxClient(verify=http_clients.tls_context()),
    )
    await client.close()


KINDS: dict[str, Callable[[], Awaitable[None]]] = {
    "httpx.AsyncClient()": _httpx_own,
    "http_clients.async_client()": _httpx_shared,
    "pipecat create_client (per call)": _pipecat_per_call,
    "AsyncOpenAI on the shared context": _openai_shared,
}


async def main(repeat: int) -> None:
    await http_clients.warm()
    for make in KINDS.values():  # imports, first-use costs
        await make()
    times: dict[str, list[float]] = {name: [] for name in KINDS}
    for _ in range(repeat):  # interleaved: a slow moment of the machine hits every kind
        for name, make in KINDS.items():
            started = time.perf_counter()
            await make()
            times[name].append((time.perf_counter() - started) * 1e3)
    for name, values in times.items():
        print(
            f"{name:<36} p50 {p50(values):6.2f} ms  p95 {p95(values):6.2f} ms  "
            f"mean {statistics.fmean(values):6.2f} ms  (n={len(values)})"
        )
    own = p50(times["httpx.AsyncClient()"]) / p50(times["http_clients.async_client()"])
    call = p50(times["pipecat create_client (per call)"])
    print(
        f"http_clients: httpx client {p50(times['httpx.AsyncClient()']):.1f} -> "
        f"{p50(times['http_clients.async_client()']):.2f} ms ({own:.0f}x); "
        f"a call's LLM client {call:.1f} ms -> none (one per server)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="clients of each kind")
    asyncio.run(main(parser.parse_args().repeat))
