"""A caller that speaks Twilio's Media Streams protocol exactly: ``voxline dial``'s engine.

It does what Twilio does for one inbound call: POSTs the voice webhook with a
valid ``X-Twilio-Signature``, opens the ``<Stream>`` URL from the TwiML, sends
``connected`` and ``start``, then 20 ms µ-law ``media`` frames paced in real
time (silence when the caller is not talking). It plays the bot's audio on a
clock, echoes each ``mark`` once the audio before it has played, drops its
buffered audio on ``clear`` (echoing the marks it held), and sends ``stop`` at
the end. It records what the caller heard and when.

:class:`TwilioCaller` is the call and its webhook; the media stream is spoken by
:mod:`voxline.transports.twilio_caller_stream`, the caller's words are framed by
:mod:`voxline.transports.caller_frames`, and what the call reports is in
:mod:`voxline.transports.dial_result`.
"""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Sequence

import httpx
import numpy as np
from twilio.request_validator import RequestValidator

from voxline.transports.caller_frames import mulaw_frames
from voxline.transports.dial_result import DialError, DialResult
from voxline.transports.twilio_caller_stream import CallPlan, stream_call


class TwilioCaller:
    """One simulated Twilio call against a voxline server.

    Args:
        server_url: where the server listens, e.g. ``http://127.0.0.1:8080``.
        auth_token: the Twilio auth token the server validates signatures with.
        webhook_url: the URL Twilio would post to (the server's ``public_url``
            plus ``/twilio/voice``); default: ``server_url`` + ``/twilio/voice``.
        number: the called number (picks the persona).
        caller_id: the calling number.
    """

    def __init__(
        self,
        server_url: str,
        *,
        auth_token: str,
        webhook_url: str | None = None,
        number: str = "+15550100000",
        caller_id: str = "+15550199999",
    ):
        self.server_url = server_url.rstrip("/")
        self.webhook_url = webhook_url or self.server_url + "/twilio/voice"
        self.auth_token = auth_token
        self.number = number
        self.caller_id = caller_id
        self.call_sid = "CA" + secrets.token_hex(16)
        self.account_sid = "AC" + secrets.token_hex(16)

    async def request_stream(self, signature: str | None = None) -> tuple[str, dict[str, str]]:
        """POST the signed voice webhook; return the stream URL and its parameters.

        Raises:
            DialError: the webhook was refused or the TwiML holds no stream.
        """
        params = {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.caller_id,
            "To": self.number,
            "CallStatus": "ringing",
            "Direction": "inbound",
        }
        if signature is None:
            signature = RequestValidator(self.auth_token).compute_signature(
                self.webhook_url, params
            )
        post_url = self.server_url + "/twilio/voice"
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                post_url, data=params, headers={"X-Twilio-Signature": signature}
            )
        if response.status_code != 200:
            raise DialError(f"voice webhook answered HTTP {response.status_code}: {response.text}")
        root = ElementTree.fromstring(response.text)
        stream = root.find("./Connect/Stream")
        if stream is None:
            raise DialError(f"the TwiML connects no stream: {response.text}")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return stream.get("url", ""), parameters

    async def call(
        self,
        audio: np.ndarray,
        rate: int,
        *,
        greeting_timeout: float = 15.0,
        hang_up_after_quiet: float = 2.5,
        timeout: float = 120.0,
        dtmf: str = "",
        stream: tuple[str, dict[str, str]] | None = None,
        barge_in: np.ndarray | None = None,
        barge_in_after_secs: float = 1.0,
        extra_messages: list[str | bytes] | None = None,
        then: Sequence[tuple[np.ndarray, float]] = (),
        gate: Callable[[], Awaitable[None]] | None = None,
        greeting_quiet: float | None = None,
    ) -> DialResult:
        """Place the call, say ``audio`` after the greeting, and hang up once the bot is done.

        Args:
            audio: the caller's words, mono float in [-1, 1] (may be empty).
            rate: its sample rate.
            greeting_timeout: how long to wait for the greeting before speaking anyway.
            hang_up_after_quiet: seconds of bot silence after the caller's last
                words before the caller hangs up; negative: hang up as soon as
                the answer starts playing (a ``stop`` in the middle of a reply).
            timeout: an upper bound on the whole call.
            dtmf: keypad digits to press after speaking.
            stream: a stream URL and parameters to use instead of the webhook's.
            barge_in: more words (at ``rate``), spoken ``barge_in_after_secs``
                after the bot's answer starts playing: an interruption.
            extra_messages: raw messages sent right after ``start`` (protocol tests).
            then: more utterances (at ``rate``), each with a pause: said once the bot's
                answer to the one before has started and then been quiet that many
                seconds (or after ``twilio_caller_stream.REPLY_TIMEOUT_SECS`` without an
                answer).
            gate: awaited once the greeting is heard, the line carrying silence
                meanwhile, before the first words: callers that share a gate can
                start speaking at the same moment.
            greeting_quiet: the greeting counts as heard once the bot has spoken and
                then been quiet this many seconds (for servers that send no marks);
                by default, at the first mark echoed.
        """
        plan = CallPlan(
            first=mulaw_frames(np.asarray(audio, dtype=np.float32), rate),
            second=mulaw_frames(np.asarray(barge_in, dtype=np.float32), rate)
            if barge_in is not None
            else [],
            second_after=barge_in_after_secs,
            extra=extra_messages or [],
            then=[
                (mulaw_frames(np.asarray(words, dtype=np.float32), rate), pause)
                for words, pause in then
            ],
            gate=gate,
            greeting_quiet=greeting_quiet,
        )
        url, parameters = stream or await self.request_stream()
        return await asyncio.wait_for(
            stream_call(
                url,
                parameters,
                plan,
                greeting_timeout,
                hang_up_after_quiet,
                dtmf,
                call_sid=self.call_sid,
                account_sid=self.account_sid,
            ),
            timeout=timeout,
        )
