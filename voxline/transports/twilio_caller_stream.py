"""The simulated caller's side of a Twilio media stream, spoken as Twilio speaks it.

Over the ``<Stream>`` URL the webhook's TwiML named, :func:`stream_call` sends
``connected`` and ``start`` (with the TwiML's parameters), then 20 ms µ-law
``media`` frames paced in real time: the caller's words (:class:`CallPlan`), and
silence when the caller is not talking. It plays the bot's audio on the caller's
clock (:class:`~voxline.transports.caller_ear.CallerEar`), echoes each ``mark``
once the audio before it has played, drops its buffered audio on ``clear``
(echoing the marks it held), presses keys (``dtmf``) and sends ``stop`` when the
caller hangs up. It is the media-stream half of
:class:`~voxline.transports.twilio_caller.TwilioCaller`, which posts the webhook
first, and reports the call as a :class:`~voxline.transports.dial_result.DialResult`.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import websockets

from voxline.transports.caller_ear import CallerEar
from voxline.transports.caller_frames import FRAME_SAMPLES, FRAME_SECS, RATE
from voxline.transports.dial_result import DialResult, HeardTurn
from voxline.transports.levels import is_voiced

REPLY_TIMEOUT_SECS = 30.0
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1}


@dataclass
class CallPlan:
    """What the caller says: µ-law frames, and an optional barge-in."""

    first: list[tuple[bytes, bool]]
    second: list[tuple[bytes, bool]]
    second_after: float
    extra: list[str | bytes]
    then: list[tuple[list[tuple[bytes, bool]], float]] = field(default_factory=list)
    gate: Callable[[], Awaitable[None]] | None = None
    greeting_quiet: float | None = None


async def stream_call(
    url: str,
    parameters: dict[str, str],
    plan: CallPlan,
    greeting_timeout: float,
    quiet: float,
    dtmf: str,
    *,
    call_sid: str,
    account_sid: str,
) -> DialResult:
    """Speak one call over its media stream until the caller hangs up.

    Args:
        url: the stream URL from the webhook's TwiML.
        parameters: the stream's custom parameters, sent in ``start``.
        plan: what the caller says, and when.
        greeting_timeout: how long to wait for the greeting before speaking anyway.
        quiet: seconds of bot silence before hanging up; negative: hang up as soon
            as the answer starts playing.
        dtmf: keypad digits to press after speaking.
        call_sid: the call's ``CallSid`` (the one the webhook was posted with).
        account_sid: the ``AccountSid`` sent in ``start`` and ``stop``.
    """
    loop = asyncio.get_running_loop()
    origin = loop.time()
    clock = lambda: loop.time() - origin  # noqa: E731
    stream_sid = "MZ" + secrets.token_hex(16)
    result = DialResult(
        call_sid=call_sid,
        turns=[],
        heard=np.zeros(0, dtype=np.int16),
        opened_at=time.time() - clock(),
    )
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
                "accountSid": account_sid,
                "callSid": call_sid,
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
                ids = {"accountSid": account_sid, "callSid": call_sid}
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
