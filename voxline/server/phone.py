"""Phone calls: the Twilio voice webhook, and the admission of the media stream it connects.

The webhook checks Twilio's signature against the public URL, picks the persona
for the called number, reserves the call's admission slot and answers TwiML that
connects a media stream, passing the persona and a short-lived single-use token
as stream parameters. The media stream's ``connected``/``start`` messages are read
first (:mod:`voxline.server.phone_start`); the stream's token is checked and the
reserved slot claimed here, and only then is the call run on the shared engines
(:mod:`voxline.server.phone_call`). Whatever a peer sends, the stream ends with at
most a close code and a one-line log, never a traceback.

Behind a balancer the stream may reach another process than the webhook did (they
share the token key). The stream URL names the process that answered the webhook
(``/twilio/stream/<instance>``), so a process can tell at the handshake, before
accepting, whether the stream is its own promised call: a stream of another
process's call is taken only when a line is free here and this process is not
draining; otherwise the handshake is answered 503 and a balancer that retries on
503 tries the next process, eventually the one holding the call's reservation.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from fastapi import WebSocket, WebSocketDisconnect
from loguru import logger

from voxline import logcontent
from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.personas import Persona
from voxline.server.admission import Admission, CallRejected, Slot
from voxline.server.drain import Drain
from voxline.server.phone_call import run_call
from voxline.server.phone_start import (
    START_TIMEOUT_SECS,
    TRY_AGAIN_LATER,
    StreamRefused,
    read_start,
)
from voxline.transports.twilio import POLICY_VIOLATION, close_quietly
from voxline.transports.twilio_protocol import Start
from voxline.transports.twilio_webhook import (
    StreamTokenError,
    StreamTokens,
    TwilioRestClient,
    busy_twiml,
    connect_twiml,
    signature_is_valid,
)

__all__ = ["TRY_AGAIN_LATER", "HandshakeRefused", "PhoneLine", "WebhookRejected"]


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
                await run_call(
                    websocket,
                    persona,
                    start,
                    runtime=self.runtime,
                    twilio=self.config.twilio,
                    rest=self.rest_client(),
                    drain=self.drain,
                )
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
        """Read until ``start`` (:func:`~voxline.server.phone_start.read_start`), counted
        among the streams waiting for theirs.

        Raises:
            StreamRefused: the peer closed, stopped, sent too much or nothing in time,
                or too many streams are waiting already.
        """
        if self.waiting >= self.max_waiting:
            raise StreamRefused(TRY_AGAIN_LATER, "too many media streams waiting for start")
        self.waiting += 1
        try:
            return await read_start(websocket)
        finally:
            self.waiting -= 1
