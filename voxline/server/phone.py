"""Phone calls: the Twilio voice webhook and the media stream that carries one call.

The webhook checks Twilio's signature against the public URL, picks the persona
for the called number, reserves the call's admission slot and answers TwiML that
connects a media stream, passing the persona and a short-lived single-use token
as stream parameters. The media stream reads Twilio's ``connected``/``start``
messages itself, checks the token, claims the reserved slot and only then builds
the call's pipeline on the shared engines. Whatever a peer sends, the stream ends
with at most a close code and a one-line log, never a traceback.

Behind a balancer the stream may reach another process than the webhook did (they
share the token key). The stream URL names the process that answered the webhook
(``/twilio/stream/<instance>``), so a process can tell at the handshake, before
accepting, whether the stream is its own promised call: a stream of another
process's call is taken only when a line is free here and this process is not
draining; otherwise the handshake is answered 503 and a balancer that retries on
503 tries the next process, eventually the one holding the call's reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import WebSocket, WebSocketDisconnect
from loguru import logger
from pipecat.workers.runner import WorkerRunner

from voxline import logcontent
from voxline.bot.call_events import TIME_LIMIT, CallEventsForCall, CallInfo
from voxline.bot.phone_control import TwilioCallControl, run_lengths
from voxline.bot.runtime import Runtime
from voxline.bot.session import build_call
from voxline.config import ServerConfig
from voxline.personas import Persona
from voxline.processors.latency import LatencyTracer
from voxline.server.admission import Admission, CallRejected, Slot
from voxline.server.drain import DRAIN_TIMEOUT, Drain
from voxline.transports.twilio import (
    POLICY_VIOLATION,
    TWILIO_RATE,
    TwilioMediaSerializer,
    TwilioStream,
    TwilioTransport,
    close_quietly,
    twilio_params,
)
from voxline.transports.twilio_protocol import ProtocolError, Start, Stop, parse_message
from voxline.transports.twilio_webhook import (
    StreamTokenError,
    StreamTokens,
    TwilioRestClient,
    busy_twiml,
    connect_twiml,
    signature_is_valid,
)

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


class HandshakeRefused(Exception):
    """A media stream is refused before its websocket is accepted (HTTP 503): another
    process behind the balancer should take it."""


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
    drain: Drain | None = None
    """The process's drain, which ends the calls still running at its deadline."""
    instance: str = field(default_factory=lambda: secrets.token_hex(4))
    """Names this process in the stream URLs it hands out (``/twilio/stream/<instance>``)."""
    waiting: int = 0
    """Media streams open and not yet started (bounded by :attr:`max_waiting`)."""

    @property
    def max_waiting(self) -> int:
        """How many streams may wait for their ``start`` at once; more are refused (1013).

        Each promised call has one stream; the margin covers Twilio's retries.
        """
        return 2 * self.admission.max_calls + 8

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
            TwiML connecting the stream, or rejecting the call as busy at capacity or
            while the process drains.

        Raises:
            WebhookRejected: 403 for a missing or wrong signature, 400 for a
                request without a CallSid, 503 instead of the busy TwiML when
                ``twilio.busy_status`` is 503 (a balancer in front retries).
        """
        if not self.auth_token:
            logger.error("TWILIO_AUTH_TOKEN is not set: every voice webhook is refused")
            raise WebhookRejected(403, "webhook signature cannot be checked")
        if not signature_is_valid(self.auth_token, url, params, signature):
            raise WebhookRejected(403, "invalid X-Twilio-Signature")
        call_sid = params.get("CallSid", "")
        if not call_sid:
            raise WebhookRejected(400, "CallSid is missing")
        # Check and take in one step: the stream claims this slot when it starts.
        if self.admission.try_take(key=call_sid, hold_secs=self.tokens.ttl_secs) is None:
            reason = self.admission.busy_reason()
            if self.config.twilio.busy_status == 503:
                raise WebhookRejected(503, reason)
            logger.warning(f"call {call_sid} rejected: {reason}")
            return busy_twiml()
        persona = self.persona_for(params.get("To", ""))
        base = url.split("/twilio/")[0]
        stream_url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        token = self.tokens.issue(persona.name, call_sid)
        masked, called = logcontent.number(params.get("From", "")) or "?", params.get("To", "?")
        logger.info(f"call {call_sid} from {masked} to {called}: persona {persona.name}")
        parameters = {"persona": persona.name, "token": token}
        if caller := params.get("From", ""):
            parameters["caller"] = caller
        if called != "?":
            parameters["called"] = called
        return connect_twiml(f"{stream_url}/twilio/stream/{self.instance}", parameters)

    def handshake(self, instance: str | None) -> Slot | None:
        """Decide, before accepting it, whether a media stream is taken here.

        Args:
            instance: the process named in the stream's URL; None for the plain
                ``/twilio/stream`` (decided when the stream starts, as before).

        Returns:
            A free line taken for a stream of another process's call (the stream's
            start claims it), or None for this process's own calls.

        Raises:
            HandshakeRefused: another process's call while this one is full or draining.
        """
        if instance is None or instance == self.instance:
            return None
        slot = self.admission.try_take(hold_secs=START_TIMEOUT_SECS)
        if slot is None:
            raise HandshakeRefused(self.admission.busy_reason())
        return slot

    async def serve_stream(self, websocket: WebSocket, line: Slot | None = None) -> None:
        """Run one call over an accepted media-stream websocket until it ends.

        Nothing a peer sends makes this raise: a refusal closes the socket with a
        code and a reason, a peer that vanishes ends the call, and anything else
        unexpected is logged as one line.

        Args:
            websocket: the accepted stream.
            line: the slot :meth:`handshake` took for it, if any (released if unused).
        """
        try:
            await self._serve_stream(websocket, line)
        except (WebSocketDisconnect, OSError) as exc:
            logger.info(f"twilio stream: the peer went away ({type(exc).__name__})")
        except Exception as exc:
            logger.error(f"twilio stream failed: {type(exc).__name__}: {exc}")
            logger.opt(exception=exc).debug("twilio stream failure")
            await close_quietly(websocket, 1011, "internal error")
        finally:
            if line is not None:
                line.release()  # harmless when the call held (and released) it

    async def _serve_stream(self, websocket: WebSocket, line: Slot | None = None) -> None:
        try:
            start = await self._read_start(websocket)
            persona, slot = self._admit(start, line)
        except StreamRefused as exc:
            logger.warning(f"twilio stream refused ({exc.code}): {exc}")
            await close_quietly(websocket, exc.code, str(exc))
            return
        try:
            async with self.admission.hold(slot):
                await self._run_call(websocket, persona, start)
        except CallRejected as exc:
            logger.warning(f"call {start.start.call_sid} refused: {exc}")
            await close_quietly(websocket, TRY_AGAIN_LATER, str(exc))

    def _admit(self, start: Start, line: Slot | None = None) -> tuple[Persona, Slot]:
        """Check the stream's token and claim its call's slot (reserved by the webhook,
        or ``line``, taken at the handshake for another process's call).

        Raises:
            StreamRefused: 1008 for a bad token or persona, 1013 when no slot is free.
        """
        params = start.start.custom_parameters
        call_sid = start.start.call_sid
        persona = self.personas.get(params.get("persona", ""))
        if persona is None:
            unknown = f"call {call_sid}: unknown persona {params.get('persona')!r}"
            raise StreamRefused(POLICY_VIOLATION, unknown)
        try:
            self.tokens.redeem(params.get("token", ""), persona.name, call_sid)
        except StreamTokenError as exc:
            raise StreamRefused(POLICY_VIOLATION, f"call {call_sid}: {exc}") from None
        # A stream whose webhook reached another process (or whose reservation lapsed)
        # takes a free slot if there is one.
        slot = self.admission.claim(call_sid)
        if slot is not None and line is not None:
            line.release()  # the reservation was here after all
        slot = slot or line or self.admission.try_take()
        if slot is None:
            raise StreamRefused(TRY_AGAIN_LATER, self.admission.busy_reason())
        return persona, slot

    async def _read_start(self, websocket: WebSocket) -> Start:
        """Read until ``start``; drop (and log) anything else that comes first.

        Raises:
            StreamRefused: the peer closed, stopped, sent too much or nothing in time,
                or too many streams are waiting already.
        """
        if self.waiting >= self.max_waiting:
            raise StreamRefused(TRY_AGAIN_LATER, "too many media streams waiting for start")
        self.waiting += 1
        try:
            return await asyncio.wait_for(self._receive_start(websocket), START_TIMEOUT_SECS)
        except TimeoutError:
            raise StreamRefused(
                POLICY_VIOLATION, f"no start message within {START_TIMEOUT_SECS:.0f} s"
            ) from None
        finally:
            self.waiting -= 1

    async def _receive_start(self, websocket: WebSocket) -> Start:
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

    async def _run_call(self, websocket: WebSocket, persona: Persona, start: Start) -> None:
        info = start.start
        stream = TwilioStream(stream_sid=info.stream_sid, call_sid=info.call_sid)
        stream.events.extend(["connected", "start"])
        serializer = TwilioMediaSerializer(stream)
        twilio = self.config.twilio
        transport = TwilioTransport(
            websocket,
            stream,
            params=twilio_params(serializer, out_frame_ms=twilio.out_frame_ms),
            send_ahead_secs=twilio.send_ahead_ms / 1000,
        )
        events = self.runtime.calls.open(
            CallInfo(
                persona=persona.name,
                transport="twilio",
                caller=info.custom_parameters.get("caller", ""),
                called=info.custom_parameters.get("called") or None,
                call_sid=info.call_sid,
            )
        )
        tracer = LatencyTracer(on_turn=events.turn_finished)
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
        logger.info(f"call {info.call_sid}: stream {info.stream_sid} started")

        async def on_stop() -> None:
            await call.worker.cancel(reason="caller hung up")

        stream.on_stop = on_stop

        async def on_violation(reason: str) -> None:
            logger.warning(f"call {info.call_sid}: stream closed: {reason}")
            await transport.refuse(reason)
            await call.worker.cancel(reason=reason)

        stream.on_violation = on_violation

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport, _websocket) -> None:
            await call.worker.cancel(reason="media stream closed")

        limit = asyncio.get_running_loop().call_later(
            persona.limits.max_call_secs,
            lambda: asyncio.ensure_future(self._end_call(control, events)),
        )
        events.attach(call.worker, tracer)

        async def end_at_drain_deadline() -> None:
            events.note_end_reason(DRAIN_TIMEOUT)
            await control.end_call()

        tracked = (
            self.drain.track(f"call {info.call_sid}", end_at_drain_deadline)
            if self.drain is not None
            else contextlib.nullcontext()
        )
        try:
            with events.log_context(), tracked:
                await runner.run()
        finally:
            limit.cancel()
            events.end()
            log = events.bound_logger()  # the end-of-call lines carry the call's ids too
            log.info(
                f"call {info.call_sid} ended: events {run_lengths(stream.events)}; "
                f"{len(stream.dropped)} dropped; {len(tracer.turns)} turns"
            )
            # The persona's own prompt is not in the context (the LLM service's
            # system_instruction): the context starts with the call's facts.
            messages = call.context.get_messages()
            log.info(f"call {info.call_sid} context {logcontent.messages(messages)}")

    async def _end_call(self, control: TwilioCallControl, events: CallEventsForCall) -> None:
        logger.info(f"call {control.call_sid}: max_call_secs reached")
        events.note_end_reason(TIME_LIMIT)
        await control.end_call()  # once per call, with end_call and the drain's deadline
