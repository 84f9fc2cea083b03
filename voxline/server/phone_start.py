"""A media stream's start: Twilio's ``connected``/``start`` messages, read before the call.

Twilio opens a media stream with ``connected`` then ``start``, which carries the
call's ids and the stream parameters the webhook's TwiML set (persona, token).
Nothing of the call is built until ``start`` has arrived, so the wait is bounded
in time and in messages, and whatever else a peer sends first is dropped with a
one-line log. A stream refused here, or at its admission, is closed with the code
:class:`StreamRefused` carries.
"""

from __future__ import annotations

import asyncio

from fastapi import WebSocket
from loguru import logger

from voxline.transports.twilio import POLICY_VIOLATION
from voxline.transports.twilio_protocol import ProtocolError, Start, Stop, parse_message

START_TIMEOUT_SECS = 10.0
MAX_MESSAGES_BEFORE_START = 16
"""Twilio sends ``connected`` then ``start``: a peer that sends this many others is refused."""
TRY_AGAIN_LATER = 1013
NORMAL_CLOSURE = 1000


class StreamRefused(Exception):
    """A media stream is refused before its call starts: close with ``code`` and the reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


async def read_start(websocket: WebSocket) -> Start:
    """Read until ``start`` within :data:`START_TIMEOUT_SECS`; drop (and log) anything
    else that comes first.

    Raises:
        StreamRefused: the peer closed, stopped, sent too much or nothing in time.
    """
    try:
        return await asyncio.wait_for(_receive_start(websocket), START_TIMEOUT_SECS)
    except TimeoutError:
        raise StreamRefused(
            POLICY_VIOLATION, f"no start message within {START_TIMEOUT_SECS:.0f} s"
        ) from None


async def _receive_start(websocket: WebSocket) -> Start:
    for _ in range(MAX_MESSAGES_BEFORE_START):
        data = await websocket.receive()
        if data.get("type") == "websocket.disconnect":
            raise StreamRefused(NORMAL_CLOSURE, "the peer closed the stream before start")
        text = data.get("text")
        raw = text if text is not None else data.get("bytes") or b""
        try:
            message = parse_message(raw)
        except ProtocolError as exc:
            logger.warning(f"twilio stream: dropped message before start: {exc}")
            continue
        if isinstance(message, Start):
            return message
        if isinstance(message, Stop):
            raise StreamRefused(NORMAL_CLOSURE, "stop before start: the call ended")
        if message.event != "connected":
            logger.warning(f"twilio stream: {message.event} before start, dropped")
    raise StreamRefused(
        POLICY_VIOLATION, f"no start message in the first {MAX_MESSAGES_BEFORE_START} messages"
    )
