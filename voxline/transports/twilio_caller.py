"""A caller that speaks Twilio's Media Streams protocol exactly: ``voxline dial``'s engine.

It does what Twilio does for one inbound call: POSTs the voice webhook with a
valid ``X-Twilio-Signature``, opens the ``<Stream>`` URL from the TwiML, sends
``connected`` and ``start``, then 20 ms µ-law ``media`` frames paced in real
time (silence when the caller is not talking). It plays the bot's audio on a
clock, echoes each ``mark`` once the audio before it has played, drops its
buffered audio on ``clear`` (echoing the marks it held), and sends ``stop`` at
the end. It records what the caller heard and when.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import contextlib
import json
import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
import soxr
import websockets
from twilio.request_validator import RequestValidator

from voxline.transports.caller_ear import CallerEar
from voxline.transports.levels import is_voiced

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_SECS = FRAME_SAMPLES / RATE
REPLY_TIMEOUT_SECS = 30.0
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1}


class DialError(RuntimeError):
    """The server refused the call or broke the protocol."""


@dataclass
class HeardTurn:
    """One caller utterance and the bot's answer as the caller heard it."""

    caller_end: float
    bot_start: float | None = None
    caller_start: float | None = None

    @property
    def latency_ms(self) -> float | None:
        """Voice-to-voice: caller's last voiced frame sent → bot's first voiced audio played."""
        return (
            None if self.bot_start is None else round((self.bot_start - self.caller_end) * 1e3, 1)
        )


@dataclass
class DialResult:
    """What happened on the call, on the caller's clock (seconds since the stream opened)."""

    call_sid: str
    turns: list[HeardTurn]
    heard: np.ndarray
    received: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)
    speech_onsets: list[float] = field(default_factory=list)
    marks_echoed: int = 0
    close_code: int | None = None
    played: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """Each ``media`` message of the bot's as (time it started playing, its samples)."""
    most_ahead_secs: float = 0.0
    """The most bot audio that waited to be played at once (received, not yet heard)."""


def mulaw_frames(audio: np.ndarray, rate: int) -> list[tuple[bytes, bool]]:
    """20 ms µ-law frames of the caller's words, each with whether it is voiced."""
    if not audio.size:
        return []
    samples = audio if rate == RATE else soxr.resample(audio, rate, RATE)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    pad = (-pcm.size) % FRAME_SAMPLES
    pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    frames = (pcm[i : i + FRAME_SAMPLES] for i in range(0, pcm.size, FRAME_SAMPLES))
    return [(audioop.lin2ulaw(frame.tobytes(), 2), is_voiced(frame)) for frame in frames]


@dataclass
class _Plan:
    """What the caller says: µ-law frames, and an optional barge-in."""

    first: list[tuple[bytes, bool]]
    second: list[tuple[bytes, bool]]
    second_after: float
    extra: list[str | bytes]
    then: list[tuple[list[tuple[bytes, bool]], float]] = field(default_factory=list)
    gate: Callable[[], Awaitable[None]] | None = None
    greeting_quiet: float | None = None


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
                seconds (or after ``REPLY_TIMEOUT_SECS`` without an answer).
            gate: awaited once the greeting is heard, the line carrying silence
                meanwhile, before the first words: callers that share a gate can
                start speaking at the same moment.
            greeting_quiet: the greeting counts as heard once the bot has spoken and
                then been quiet this many seconds (for servers that send no marks);
                by default, at the first mark echoed.
        """
        plan = _Plan(
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
            self._stream(url, parameters, plan, greeting_timeout, hang_up_after_quiet, dtmf),
            timeout=timeout,
        )

    async def _stream(
        self,
        url: str,
        parameters: dict[str, str],
        plan: _Plan,
        greeting_timeout: float,
        quiet: float,
        dtmf: str,
    ) -> DialResult:
        loop = asyncio.get_running_loop()
        origin = loop.time()
        clock = lambda: loop.time() - origin  # noqa: E731
        stream_sid = "MZ" + secrets.token_hex(16)
        result = DialResult(call_sid=self.call_sid, turns=[], heard=np.zeros(0, dtype=np.int16))
        ear = CallerEar(RATE)
        first_mark = asyncio.Event()
        bot_spoke = asyncio.Event()
        activity = asyncio.Event()
        caller_done = asyncio.Event()

        async with websockets.connect(url, max_size=2**20) as ws:

            async def send(message: dict) -> None:
                result.sent.append(message["event"])
                await ws.send(json.dumps(message))

            async def echo_marks_due() -> None:
                for name in ear.marks_due(clock()):
                    result.marks_echoed += 1
                    first_mark.set()
                    await send({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})

            async def receive() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    event = message.get("event", "?")
                    result.received.append(event)
                    now = clock()
                    if event == "media":
                        pcm = np.frombuffer(
                            audioop.ulaw2lin(base64.b64decode(message["media"]["payload"]), 2),
                            dtype=np.int16,
                        )
                        start = ear.media(now, pcm)
                        if is_voiced(pcm):
                            activity.set()
                            bot_spoke.set()
                            for turn in result.turns:
                                if turn.bot_start is None and start >= turn.caller_end:
                                    turn.bot_start = start
                    elif event == "mark":
                        ear.mark(now, message["mark"]["name"])
                    elif event == "clear":
                        result.clear_times.append(now)
                        ear.clear(now)  # Twilio drops what is unplayed, echoes held marks
                    await echo_marks_due()

            sent = 0
            started = loop.time()

            async def tick(payload: bytes) -> None:
                """Send one 20 ms frame at its real-time slot."""
                nonlocal sent
                await asyncio.sleep(max(0.0, started + sent * FRAME_SECS - loop.time()))
                sent += 1
                await echo_marks_due()
                media = {
                    "track": "inbound",
                    "chunk": str(sent),
                    "timestamp": str(int(clock() * 1000)),
                    "payload": base64.b64encode(payload).decode(),
                }
                await send({"event": "media", "streamSid": stream_sid, "media": media})

            def after_greeting(now: float) -> bool:
                if now > greeting_timeout:
                    return True
                if plan.greeting_quiet is None:
                    return first_mark.is_set()
                return bot_spoke.is_set() and now >= ear.playhead + plan.greeting_quiet

            def after_answer(pause: float) -> Callable[[float], bool]:
                def ready(now: float) -> bool:
                    turn = result.turns[-1] if result.turns else None
                    if turn is None or turn.bot_start is None:
                        return turn is None or now > turn.caller_end + REPLY_TIMEOUT_SECS
                    return now >= max(ear.playhead, turn.bot_start) + pause

                return ready

            def during_answer(now: float) -> bool:
                answer = result.turns[-1].bot_start if result.turns else None
                return answer is not None and now >= answer + plan.second_after

            async def speak() -> None:
                await send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                start = {
                    "streamSid": stream_sid,
                    "accountSid": self.account_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": parameters,
                    "mediaFormat": MEDIA_FORMAT,
                }
                await send({"event": "start", "streamSid": stream_sid, "start": start})
                for raw in plan.extra:
                    await ws.send(raw)
                silence = audioop.lin2ulaw(bytes(FRAME_SAMPLES * 2), 2)
                utterances = [(plan.first, after_greeting)]
                utterances += [(frames, after_answer(pause)) for frames, pause in plan.then]
                if plan.second:
                    utterances.append((plan.second, during_answer))
                for number, (frames, ready) in enumerate(utterances):
                    while not ready(clock()):
                        await tick(silence)
                    if number == 0 and plan.gate is not None:
                        gate = asyncio.ensure_future(plan.gate())
                        while not gate.done():
                            await tick(silence)
                        gate.result()
                    first_voiced: float | None = None
                    last_voiced: float | None = None
                    for payload, voiced in frames:
                        now = clock()
                        if voiced:
                            if last_voiced is None or now - last_voiced > 0.5:
                                result.speech_onsets.append(now)
                            first_voiced = now if first_voiced is None else first_voiced
                            last_voiced = now + FRAME_SECS
                        await tick(payload)
                    if last_voiced is not None:
                        result.turns.append(
                            HeardTurn(caller_end=last_voiced, caller_start=first_voiced)
                        )
                        activity.clear()
                if not plan.first:
                    while not after_greeting(clock()):
                        await tick(silence)
                for digit in dtmf:
                    key = {"track": "inbound_track", "digit": digit}
                    await send({"event": "dtmf", "streamSid": stream_sid, "dtmf": key})
                caller_done.set()
                while True:  # a phone line carries silence until the caller hangs up
                    await tick(silence)

            def answered() -> bool:
                return all(turn.bot_start is not None for turn in result.turns)

            async def wait_until_done() -> None:
                await caller_done.wait()
                # A caller waits for an answer to what they said before hanging up...
                deadline = clock() + REPLY_TIMEOUT_SECS
                while not answered() and clock() < deadline:
                    activity.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(activity.wait(), timeout=deadline - clock())
                if quiet < 0:  # ... or hangs up as soon as the answer starts playing
                    return
                # ... then until the bot has been quiet for a while.
                while True:
                    remaining = ear.playhead + quiet - clock()
                    if remaining <= 0 and not ear.owes_marks:
                        return
                    activity.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(activity.wait(), timeout=max(remaining, 0.05))

            tasks = [asyncio.create_task(receive()), asyncio.create_task(speak())]
            done_task = asyncio.create_task(wait_until_done())
            try:
                finished, _ = await asyncio.wait(
                    [*tasks, done_task], return_when=asyncio.FIRST_COMPLETED
                )
                if done_task in finished:
                    ids = {"accountSid": self.account_sid, "callSid": self.call_sid}
                    await send({"event": "stop", "streamSid": stream_sid, "stop": ids})
            except websockets.ConnectionClosed:
                pass
            finally:
                for task in [*tasks, done_task]:
                    task.cancel()
                await asyncio.gather(*tasks, done_task, return_exceptions=True)
            result.close_code = ws.close_code
        result.heard = ear.timeline()
        result.played = ear.played
        result.most_ahead_secs = ear.most_ahead_secs
        return result
