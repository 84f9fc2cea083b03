"""HTTP clients share one TLS context, and every call's LLM service its server's client."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest

from voxline.engines import http_clients
from voxline.engines.llm_backend import LLMBackend, LLMEndpoint
from voxline.processors.llm import VoxlineLLMService

pytestmark = pytest.mark.asyncio

ENDPOINT = LLMEndpoint(base_url="http://127.0.0.1:9", model="smollm2")


async def test_clients_share_one_context_that_still_checks_certificates():
    await http_clients.warm()
    context = http_clients.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    first, second = http_clients.async_client(), http_clients.async_client(timeout=3.0)
    try:
        for client in (first, second):
            pool = client._transport._pool  # httpx keeps the context on its connection pool
            assert pool._ssl_context is context
        assert second.timeout.read == 3.0
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_client_costs_the_event_loop_no_certificate_loading():
    """Made on the loop after warm(): well under the ~20 ms of a client with its own context."""
    await http_clients.warm()
    started = time.perf_counter()
    clients = [http_clients.async_client() for _ in range(20)]
    spent = time.perf_counter() - started
    await asyncio.gather(*(client.aclose() for client in clients))
    assert spent < 0.1, f"20 clients took {spent * 1e3:.0f} ms"


async def test_every_call_on_a_server_uses_its_one_client():
    backend = LLMBackend(ENDPOINT, kind="vllm")
    calls = [
        VoxlineLLMService(backend=backend, api_key="x", base_url=ENDPOINT.api_url) for _ in range(3)
    ]
    try:
        assert all(call._client is backend.client for call in calls)
        assert backend.client.max_retries == 0  # latency is the product: no silent retries
    finally:
        await backend.close()
    alone = VoxlineLLMService(api_key="x", base_url=ENDPOINT.api_url)  # no backend: its own
    assert alone._client is not backend.client
    await alone._client.close()
