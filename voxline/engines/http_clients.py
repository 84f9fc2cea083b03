"""HTTP clients that are cheap to make: one TLS context for the whole process.

An ``httpx.AsyncClient`` builds a TLS context when it is made, whatever URL it will
ask, and that means reading and parsing the CA bundle: 19.7 ms of the event loop on
this 2-core CPU with nothing else running (``benchmarks/http_clients.py``; 0.33 ms
on a shared context), several times that when the cores are busy with calls. The
server made one for every health check and prefix-cache scrape (every 5 s), every
tool called over HTTP, and (inside pipecat's OpenAI service) every call's LLM
client. For those milliseconds the event loop that paces every call's audio runs
nothing else.

Every client here gets the same context instead, made once (off the event loop, by
:func:`warm`). Certificates are checked as before: the context is httpx's own
default (certifi's bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set).

No pipecat imports here: engines are usable and benchmarkable on their own.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for outgoing HTTPS (made on first use)."""
    return httpx.create_ssl_context()


async def warm() -> None:
    """Make the TLS context in a worker thread, so that no client made on the event
    loop afterwards pays for it there."""
    await asyncio.to_thread(tls_context)


def async_client(**kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (``kwargs`` as for it) on the shared TLS context."""
    kwargs.setdefault("verify", tls_context())
    return httpx.AsyncClient(**kwargs)
