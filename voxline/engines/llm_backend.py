"""One client for every OpenAI-compatible LLM server, with a concurrency cap.

A backend is one server (llama.cpp, vLLM, or any other reached by URL) shared by
all calls. Calls take a slot before they send a request: at most
``max_concurrent`` requests run at once, at most ``max_waiting`` wait for a slot,
and the next one is refused at once with :class:`LLMBusy` instead of queueing
without bound. The time each request waited is recorded.

The backend also reads back how well the server's prefix (KV) cache serves the
personas' prompts: vLLM counts hits in ``/metrics``; the embedded llama.cpp
server reports them on its log, which its launcher counts. A server reached by
URL is asked for vLLM's ``/metrics`` too, until it answers without them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import httpx

from voxline.engines.http_clients import async_client, tls_context

BackendKind = Literal["llama_cpp", "vllm", "external"]


class LLMBusy(RuntimeError):
    """Too many requests already wait for this LLM server: refused without waiting."""


@dataclass(frozen=True)
class LLMEndpoint:
    """Where chat completions are served.

    Attributes:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
        model: the model name to send in requests.
    """

    base_url: str
    model: str

    @property
    def api_url(self) -> str:
        """The OpenAI API root (``…/v1``)."""
        return self.base_url.rstrip("/") + "/v1"


class ConcurrencyCap:
    """At most ``max_concurrent`` holders, at most ``max_waiting`` waiters.

    Args:
        name: used in error messages.
        max_concurrent: requests that may run at once.
        max_waiting: requests that may wait for a slot; more are refused.
        history: how many wait times to keep.
    """

    def __init__(self, name: str, *, max_concurrent: int, max_waiting: int, history: int = 1024):
        if max_concurrent < 1 or max_waiting < 0:
            raise ValueError(
                f"max_concurrent must be >= 1 and max_waiting >= 0, got {max_concurrent}, "
                f"{max_waiting}"
            )
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.wait_secs: deque[float] = deque(maxlen=history)
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._waiting = 0
        self._running = 0

    @property
    def running(self) -> int:
        """Requests holding a slot now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return self._waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one slot for the body; yields the seconds spent waiting for it.

        Raises:
            LLMBusy: every slot is taken and ``max_waiting`` requests already wait.
        """
        if self._semaphore.locked() and self._waiting >= self.max_waiting:
            raise LLMBusy(
                f"LLM server {self.name} is busy: {self._running} requests running and "
                f"{self._waiting} waiting (max_concurrent={self.max_concurrent}, "
                f"max_waiting={self.max_waiting})"
            )
        started = time.perf_counter()
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        waited = time.perf_counter() - started
        self.wait_secs.append(waited)
        self._running += 1
        try:
            yield waited
        finally:
            self._running -= 1
            self._semaphore.release()


PrefixCounter = Callable[[], Awaitable[tuple[float, float] | None]]


class LLMBackend:
    """One OpenAI-compatible server shared by every call, behind a concurrency cap.

    Args:
        endpoint: the server's URL and model name.
        kind: ``llama_cpp`` and ``vllm`` servers report prefix-cache hits; others do not.
        max_concurrent: requests sent at once (vLLM batches them; llama.cpp runs
            one at a time, so more only queue on the server).
        max_waiting: requests that may wait for a slot before new ones are refused.
        prefix_counter: for servers that report hits elsewhere (the embedded
            llama.cpp server's log), returns (queried, hit) prompt tokens so far.
    """

    def __init__(
        self,
        endpoint: LLMEndpoint,
        *,
        kind: BackendKind = "external",
        max_concurrent: int = 4,
        max_waiting: int = 32,
        prefix_counter: PrefixCounter | None = None,
    ):
        self.endpoint = endpoint
        self.kind = kind
        self.cap = ConcurrencyCap(
            endpoint.base_url, max_concurrent=max_concurrent, max_waiting=max_waiting
        )
        self.prefix_cache_hit_ratio: float | None = None
        self.personas: set[str] = set()
        """Names of the personas served from here (metrics label it by them, not its URL)."""
        self._prefix_counter = prefix_counter
        self._ask_external = kind == "external"  # until it answers without vLLM's counters
        self._client = None

    @property
    def client(self):
        """An ``openai.AsyncOpenAI`` client on this server (no retries: latency is the product)."""
        if self._client is None:
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient

            self._client = AsyncOpenAI(
                base_url=self.endpoint.api_url,
                api_key="voxline",
                max_retries=0,
                http_client=DefaultAsyncHttpxClient(verify=tls_context()),
            )
        return self._client

    def slot(self):
        """``async with backend.slot():`` around one request (see :class:`ConcurrencyCap`)."""
        return self.cap.slot()

    @property
    def idle(self) -> bool:
        """No request of any call is running on the server or waiting for a slot."""
        return self.cap.running == 0 and self.cap.waiting == 0

    async def stream_chat(self, **request) -> AsyncIterator:
        """Stream one chat completion while holding a slot; closing the iterator
        closes the HTTP stream, which makes the server stop generating.

        ``request`` holds OpenAI chat-completion arguments (``messages``, ``tools``,
        ``tool_choice``, ``max_tokens``, ...); ``model`` defaults to the endpoint's.
        """
        async with self.slot():
            request.setdefault("model", self.endpoint.model)
            stream = await self.client.chat.completions.create(stream=True, **request)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.close()

    async def warm(self, **request) -> float:
        """Have the server compute a prompt now so that later requests find it cached.

        A one-token completion of ``request`` (``messages``, ``tools``) while holding
        a slot; returns the seconds it took. Used for what differs per call (the
        call's facts and greeting after the persona's prefix): computed while the
        greeting plays, not after the caller's first words.
        """
        started = time.monotonic()
        async with self.slot():
            request.setdefault("model", self.endpoint.model)
            request.update(stream=False, max_tokens=1, temperature=0.0)
            # A forced tool choice would make some servers parse one token as arguments.
            for key in ("stream_options", "tool_choice"):
                request.pop(key, None)
            await self.client.chat.completions.create(**request)
        return time.monotonic() - started

    async def prefix_cache_counters(self) -> tuple[float, float] | None:
        """Prompt tokens looked up in and served from the server's prefix cache so far.

        Updates :attr:`prefix_cache_hit_ratio`. None when the server does not say. A
        server reached by URL that answers ``/metrics`` without vLLM's counters (or
        not at all, the first time) is not asked again.
        """
        if self._prefix_counter is not None:
            counters = await self._prefix_counter()
        elif self.kind == "vllm":
            counters = await vllm_prefix_counters(self.endpoint.base_url)
        elif self._ask_external:
            counters = await vllm_prefix_counters(self.endpoint.base_url)
            self._ask_external = counters is not None
        else:
            counters = None
        if counters is not None and counters[0] > 0:
            self.prefix_cache_hit_ratio = counters[1] / counters[0]
        return counters

    async def close(self) -> None:
        """Release the HTTP connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None


async def vllm_prefix_counters(base_url: str, timeout: float = 5.0) -> tuple[float, float] | None:
    """(queried, hit) prefix-cache tokens from a vLLM server's Prometheus ``/metrics``."""
    try:
        async with async_client(timeout=timeout) as client:
            response = await client.get(base_url.rstrip("/") + "/metrics")
            response.raise_for_status()
    except httpx.HTTPError:
        return None
    # vLLM's page is tens of kilobytes: parsed in a thread, not on the calls' event loop.
    return await asyncio.to_thread(_prefix_counters_in, response.text)


def _prefix_counters_in(page: str) -> tuple[float, float] | None:
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    found = False
    try:
        for family in text_string_to_metric_families(page):
            if family.name in totals:
                found = True
                totals[family.name] += sum(
                    sample.value for sample in family.samples if sample.name.endswith("_total")
                )
    except ValueError:  # not Prometheus' text format
        return None
    if not found:
        return None
    return totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]
