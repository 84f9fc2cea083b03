"""Phone calls: the Twilio voice webhook and the media stream that carries one call.

The webhook checks Twilio's signature against the public URL, picks the persona
for the called number and answers TwiML that connects a media stream, passing
the persona and a short-lived single-use token as stream parameters. The media
stream reads Twilio's ``connected``/``start`` messages itself, checks the token,
and only then builds the call's pipeline on the shared engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import WebSocket
from loguru import logger
from pipecat.workers.runner import WorkerRunner

from voxline.bot.admission import Admission, CallRejected
from voxline.bot.phone_control import TwilioCallControl, run_lengths, say_goodbye_and_hang_up
from voxline.bot.runtime import Runtime
from voxline.bot.session import build_call
from voxline.config import ServerConfig
from voxline.personas import Persona
from voxline.processors.latency import LatencyTracer
from voxline.transports.twilio import (
    TWILIO_RATE,
    TwilioMediaSerializer,
    TwilioStream,
    TwilioTransport,
    twilio_params,
)
from voxline.transports.twilio_protocol import ProtocolError, Start, parse_message
from voxline.transports.twilio_webhook import (
    StreamTokenError,
    StreamTokens,
    TwilioRestClient,
    busy_twiml,
    connect_twiml,
    signature_is_valid,
)

START_TIMEOUT_SECS = 10.0
POLICY_VIOLATION = 1008


class WebhookRejected(Exception):
    """The webhook is refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass
class PhoneLine:
    """Everything phone calls need, shared by all of them.

    Attributes:
        config: the server config (public URL, numbers, Twilio REST root).
        runtime: the shared engines.
        personas: loaded personas by name; the first is the default.
        numbers: called number -> persona name.
        admission: the cap on concurrent calls.
    """

    config: ServerConfig
    runtime: Runtime
    personas: dict[str, Persona]
    numbers: dict[str, str]
    admission: Admission
    tokens: StreamTokens

    @property
    def auth_token(self) -> str:
        """``TWILIO_AUTH_TOKEN``: signs webhooks and authorises REST calls."""
        return os.environ.get("TWILIO_AUTH_TOKEN", "")

    def rest_client(self) -> TwilioRestClient | None:
        """A REST client when both credentials are set, else None."""
        account_sid = os.environ.get("TWILIO_ACCOUNT_SID", "")
        if not (account_sid and self.auth_token):
            return None
        return TwilioRestClient(account_sid, self.auth_token, self.config.twilio.rest_base_url)

    def public_url(self, fallback: str) -> str:
        """The URL Twilio uses to reach us (``public_url``, else the request's own)."""
        return (self.config.public_url or fallback).rstrip("/")

    def persona_for(self, called: str) -> Persona:
        """The persona answering ``called``, or the default one."""
        name = self.numbers.get(called)
        return self.personas[name] if name else next(iter(self.personas.values()))

    def answer_webhook(self, url: str, params: dict[str, str], signature: str) -> str:
        """Validate a voice webhook and return the TwiML that connects the stream.

        Args:
            url: the public URL Twilio posted to (what it signed).
            params: the form fields.
            signature: the ``X-Twilio-Signature`` header.

        Returns:
            TwiML connecting the stream, or rejecting the call as busy at capacity.

        Raises:
            WebhookRejected: 403 for a missing or wrong signature, 400 for a
                request without a CallSid.
        """
        if not self.auth_token:
            logger.error("TWILIO_AUTH_TOKEN is not set: every voice webhook is refused")
            raise WebhookRejected(403, "webhook signature cannot be checked")
        if not signature_is_valid(self.auth_token, url, params, signature):
            raise WebhookRejected(403, "invalid X-Twilio-Signature")
        call_sid = params.get("CallSid", "")
        if not call_sid:
            raise WebhookRejected(400, "CallSid is missing")
        if self.admission.full:
            logger.warning(f"call {call_sid} rejected: {self.admission.active} calls in progress")
            return busy_twiml()
        persona = self.persona_for(params.get("To", ""))
        base = url.split("/twilio/")[0]
        stream_url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        token = self.tokens.issue(persona.name, call_sid)
        logger.info(f"call {call_sid} to {params.get('To', '?')}: persona {persona.name}")
        parameters = {"persona": persona.name, "token": token}
        if caller := params.get("From", ""):
            parameters["caller"] = caller
        return connect_twiml(f"{stream_url}/twilio/stream", parameters)

    async def serve_stream(self, websocket: WebSocket) -> None:
        """Run one call over an accepted media-stream websocket until it ends."""
        start = await self._read_start(websocket)
        if start is None:
            return
        params = start.start.custom_parameters
        persona = self.personas.get(params.get("persona", ""))
        try:
            if persona is None:
                raise StreamTokenError(f"unknown persona {params.get('persona')!r}")
            self.tokens.redeem(params.get("token", ""), persona.name, start.start.call_sid)
        except StreamTokenError as exc:
            logger.warning(f"stream for call {start.start.call_sid} refused: {exc}")
            await websocket.close(code=POLICY_VIOLATION, reason=str(exc))
            return
        try:
            async with self.admission.admit():
                await self._run_call(websocket, persona, start)
        except CallRejected as exc:
            logger.warning(f"call {start.start.call_sid} refused: {exc}")
            await websocket.close(code=POLICY_VIOLATION, reason=str(exc))

    async def _read_start(self, websocket: WebSocket) -> Start | None:
        """Read until ``start``; drop (and log) anything else that comes first."""

        async def read() -> Start:
            while True:
                data = await websocket.receive()
                if data.get("type") == "websocket.disconnect":
                    raise ConnectionError("closed before start")
                text = data.get("text")
                raw = text if text is not None else data.get("bytes") or b""
                try:
                    message = parse_message(raw)
                except ProtocolError as exc:
                    logger.warning(f"twilio stream: dropped message before start: {exc}")
                    continue
                if isinstance(message, Start):
                    return message
                if message.event != "connected":
                    logger.warning(f"twilio stream: {message.event} before start, dropped")

        try:
            return await asyncio.wait_for(read(), timeout=START_TIMEOUT_SECS)
        except (TimeoutError, ConnectionError) as exc:
            logger.warning(f"twilio stream closed without a valid start: {exc or 'timeout'}")
            with contextlib.suppress(RuntimeError):
                await websocket.close(code=POLICY_VIOLATION, reason="expected a start message")
            return None

    async def _run_call(self, websocket: WebSocket, persona: Persona, start: Start) -> None:
        info = start.start
        stream = TwilioStream(stream_sid=info.stream_sid, call_sid=info.call_sid)
        stream.events.extend(["connected", "start"])
        serializer = TwilioMediaSerializer(stream)
        transport = TwilioTransport(websocket, stream, params=twilio_params(serializer))
        tracer = LatencyTracer()
        control = TwilioCallControl(
            stream=stream,
            gate=transport.gate,
            rest=self.rest_client(),
            goodbye=persona.phrases.goodbye,
            goodbye_interruptible="goodbye" not in persona.turn.uninterruptible,
        )
        call = build_call(
            persona,
            self.runtime,
            transport,
            tracer=tracer,
            out_sample_rate=TWILIO_RATE,
            call_control=control,
            facts={
                "Caller's number": info.custom_parameters.get("caller", ""),
                "Call id": info.call_sid,
                "Time (UTC)": datetime.now(UTC).strftime("%A %d %B %Y, %H:%M"),
            },
        )
        control.worker = call.worker
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(call.worker)

        async def on_stop() -> None:
            await call.worker.cancel(reason="caller hung up")

        stream.on_stop = on_stop

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport, _websocket) -> None:
            await call.worker.cancel(reason="media stream closed")

        limit = asyncio.get_running_loop().call_later(
            persona.limits.max_call_secs,
            lambda: asyncio.ensure_future(self._end_call(call.worker, transport, persona)),
        )
        try:
            await runner.run()
        finally:
            limit.cancel()
            logger.info(
                f"call {info.call_sid} ended: events {run_lengths(stream.events)}; "
                f"{len(stream.dropped)} dropped; {len(tracer.turns)} turns"
            )
            # The persona's own prompt is left out: it is the same in every call.
            messages = call.context.get_messages()[1:]
            logger.info(f"call {info.call_sid} context {json.dumps(messages)}")

    async def _end_call(self, worker, transport: TwilioTransport, persona: Persona) -> None:
        logger.info(f"call {transport.stream.call_sid}: max_call_secs reached")
        await say_goodbye_and_hang_up(
            worker,
            transport.stream,
            transport.gate,
            self.rest_client(),
            persona.phrases.goodbye,
            interruptible="goodbye" not in persona.turn.uninterruptible,
        )
