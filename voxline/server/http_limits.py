"""Bounds on every request the server takes: body size and requests per client address.

One pure ASGI middleware in front of every route (the Twilio webhook and media
stream, WebRTC signaling, the widget, health and metrics), so no route can be
used to make the server read an unbounded body or answer an unbounded stream of
requests from one address:

* a request body larger than the route's limit is answered 413 before the route
  runs (at once when ``Content-Length`` says so, otherwise as soon as the bytes
  read pass the limit);
* more requests (or websocket handshakes) from one address than its budget are
  answered 429 with ``Retry-After`` (a websocket is closed before it is accepted,
  which the client sees as HTTP 403).

Refusals are JSON ``{"error": "..."}`` like every other refusal of the server.
Refused requests are logged at most once every few seconds, as one line with
their count, so a flood does not flood the log.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxline.transports.rate_limit import RateLimiter

LOG_EVERY_SECS = 10.0
DRAIN_BYTES = 1_048_576
"""How much of a too-large body is still read (and dropped) so its client can read the 413."""


class RequestLimits:
    """ASGI middleware: per-route body limits and a per-address request rate.

    Args:
        app: the application behind it.
        body_limit: the largest body (bytes) a path takes.
        requests_per_minute: requests and websocket handshakes one address may
            make per minute (a token bucket: bursts up to that many).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limit: Callable[[str], int],
        requests_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.app = app
        self._body_limit = body_limit
        self._limiter = RateLimiter(requests_per_minute)
        self._clock = clock
        self._refused = {"413": 0, "429": 0}
        self._logged_at = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse what is over a limit; pass everything else on unchanged (bodies re-played)."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        now = self._clock()
        if not self._limiter.allow(address, now):
            retry = max(1, math.ceil(self._limiter.retry_after(address, now)))
            self._note("429", address)
            reason = f"too many requests from this address; try again in {retry} s"
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": reason})
            else:
                await _refuse(send, 429, reason, {"retry-after": str(retry)})
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self._body_limit(scope.get("path", ""))
        body = await _read_body(scope, receive, limit)
        if body is None:
            self._note("413", address)
            await _refuse(send, 413, f"the request body is larger than {limit} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    def _note(self, status: str, address: str) -> None:
        self._refused[status] += 1
        now = self._clock()
        if now - self._logged_at >= LOG_EVERY_SECS:
            counts = ", ".join(f"{count} x {code}" for code, count in self._refused.items())
            logger.warning(f"http requests refused over a limit: {counts} (last from {address})")
            self._refused = {"413": 0, "429": 0}
            self._logged_at = now


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it is known to be larger than ``limit``.

    A body found too large is read on (and dropped) up to :data:`DRAIN_BYTES` more,
    so a client still sending it can read the 413 instead of a reset connection;
    a larger one is answered at once and its connection closed.
    """
    declared = None
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            declared = int(text) if text.isdigit() else -1
    if declared is not None and (declared < 0 or declared > limit + DRAIN_BYTES):
        return None
    pieces: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the route sees what came
        piece = message.get("body", b"")
        size += len(piece)
        if size <= limit:
            pieces.append(piece)
        if not message.get("more_body", False) or size > limit + DRAIN_BYTES:
            break
    return b"".join(pieces) if size <= limit else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body first, then whatever the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(
    send: Send, status: int, reason: str, headers: dict[str, str] | None = None
) -> None:
    content = json.dumps({"error": reason}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})
