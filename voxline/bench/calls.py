"""N callers at once, and what each heard: latency, talk-over, audio underruns.

Every caller waits for the bot's greeting; once all N have heard theirs (an
asyncio gate, not a stagger) they start speaking in the same 20 ms frame.

* **Heard latency**: the caller's last voiced frame sent -> the first voiced bot
  frame received (played on the caller's clock, as Twilio plays a stream). A turn
  during which the caller heard the bot's voice (a reply to half a sentence, or
  the bot talking over the caller) has none, nor has one whose reply came only
  after the caller gave up waiting and spoke again.
* **Audio underruns**: each ``media`` message plays when it arrives or when the
  audio before it has finished, whichever is later. An underrun is a stall of at
  least ``underrun_secs`` inside one bot utterance (what the bot says between two
  starts of caller utterances): the audio before it had all played and the next
  frame came that much later, with voiced bot audio before and after it, and no
  ``clear`` in between. The greeting's underruns are counted apart.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from voxline.bench.callers import SAMPLE_RATE, UTTERANCES, Clips, Script
from voxline.transports.caller_frames import RATE as PHONE_RATE
from voxline.transports.dial_result import DialError, DialResult
from voxline.transports.levels import is_voiced
from voxline.transports.twilio_caller import TwilioCaller

GREETING_QUIET_SECS = 0.6
"""The greeting is heard once the bot has spoken and then been quiet this long (a stock
pipecat bot sends no marks, so the first mark cannot tell)."""

REFUSED_CLOSE_CODES = frozenset({1013})
"""Websocket close codes of a media stream refused at capacity ("try again later")."""


@dataclass
class Call:
    """One call's figures, as its caller heard them."""

    script: Script
    error: str | None = None
    refused: bool = False
    greeted: bool = False
    latencies: list[float | None] = field(default_factory=list)
    """Heard latency per turn (ms); None: no answer, or the bot spoke during the turn."""
    overheard: list[bool] = field(default_factory=list)
    """Per turn: the caller heard the bot's voice while it was speaking."""
    underruns: list[float] = field(default_factory=list)
    """Stalls (s) inside replies of at least the underrun threshold."""
    greeting_underruns: list[float] = field(default_factory=list)
    stall_secs: float = 0.0
    """All stalls inside bot utterances, however short."""
    underruns_at: list[tuple[float, float]] = field(default_factory=list)
    """(seconds, wall-clock start as ``time.time()``) of every underrun, the greeting's too,
    in the order heard: to find them in the server's log."""
    call_sid: str = ""

    @property
    def answered(self) -> bool:
        """The first question has a heard latency (a reply, not one spoken over it)."""
        return self.error is None and bool(self.latencies) and self.latencies[0] is not None

    @property
    def first_reply(self) -> float | None:
        """Heard latency of the answer to the first question (the burst)."""
        return self.latencies[0] if self.latencies else None

    def half_sentence(self) -> int:
        """Paused utterances during which the caller heard the bot."""
        return sum(
            heard and UTTERANCES[index].paused
            for heard, index in zip(self.overheard, self.script.utterances, strict=False)
        )

    def talk_over(self) -> int:
        """Unpaused utterances during which the caller heard the bot."""
        return sum(
            heard and not UTTERANCES[index].paused
            for heard, index in zip(self.overheard, self.script.utterances, strict=False)
        )


def bot_voiced_at(heard: np.ndarray, start: float, end: float) -> bool:
    """Whether the bot's audio heard on the phone was voiced between ``start`` and ``end``."""
    size = PHONE_RATE // 50
    begin, stop = max(0, int(start * PHONE_RATE)), int(end * PHONE_RATE)
    return any(is_voiced(heard[at : at + size]) for at in range(begin, stop - size + 1, size))


def stalls(result: DialResult) -> list[tuple[int, float, float]]:
    """(bot utterance, seconds, when) of every stall inside a bot utterance (module docstring).

    Bot utterance 0 is the greeting; utterance k is what the bot said after the caller
    began its k-th turn and before it began the next. ``when`` is the caller's clock at
    the stall's start.
    """
    starts = [turn.caller_start for turn in result.turns if turn.caller_start is not None]
    found: list[tuple[int, float, float]] = []
    chunks = [
        (start, start + pcm.size / PHONE_RATE, is_voiced(pcm)) for start, pcm in result.played
    ]
    for window, begin in enumerate([0.0, *starts]):
        end = starts[window] if window < len(starts) else math.inf
        inside = [chunk for chunk in chunks if begin <= chunk[0] < end]
        voiced_after = [any(v for _, _, v in inside[i:]) for i in range(len(inside))]
        spoken = False
        for i, (start, _, voiced) in enumerate(inside):
            if i and spoken and voiced_after[i]:
                before = inside[i - 1][1]
                gap = start - before
                cleared = any(before - 0.001 <= at <= start for at in result.clear_times)
                if gap > 0.001 and not cleared:
                    found.append((window, gap, before))
            spoken = spoken or voiced
    return found


def analyse(script: Script, result: DialResult, underrun_secs: float) -> Call:
    """One call's figures from what its caller recorded."""
    call = Call(script=script, greeted=bool(result.played), call_sid=result.call_sid)
    if not result.played and result.close_code in REFUSED_CLOSE_CODES:
        call.refused = True
        call.error = f"media stream refused (close code {result.close_code})"
        return call
    for index, turn in enumerate(result.turns):
        start = turn.caller_start if turn.caller_start is not None else turn.caller_end
        overheard = bot_voiced_at(result.heard, start, turn.caller_end)
        call.overheard.append(overheard)
        # A reply first heard after the caller began the next turn answers no question
        # of this one: the caller gave up waiting.
        following = result.turns[index + 1].caller_start if index + 1 < len(result.turns) else None
        late = turn.bot_start is not None and following is not None and turn.bot_start >= following
        call.latencies.append(None if overheard or late else turn.latency_ms)
    for window, gap, when in stalls(result):
        call.stall_secs += gap
        if gap >= underrun_secs:
            (call.greeting_underruns if window == 0 else call.underruns).append(gap)
            call.underruns_at.append((gap, result.opened_at + when))
    return call


@dataclass(frozen=True)
class Line:
    """How to reach a server: its URL, the Twilio token and the URL Twilio signs."""

    url: str
    auth_token: str
    number: str
    webhook_url: str | None = None


async def burst(
    line: Line,
    scripts: Sequence[Script],
    clips: Clips,
    underrun_secs: float,
    *,
    greeting_timeout: float = 60.0,
    call_timeout: float = 300.0,
) -> list[Call]:
    """All ``scripts`` dial at once; each speaks once every caller has heard its greeting."""
    everyone = {s.caller for s in scripts}
    arrived: set[int] = set()
    failed: set[int] = set()
    go = asyncio.Event()

    def check() -> None:
        if arrived | failed >= everyone:
            go.set()

    async def one(s: Script) -> Call:
        async def gate() -> None:
            arrived.add(s.caller)
            check()
            await go.wait()

        first, *rest = (clips.get(u, s.voice) for u in s.utterances)
        caller = TwilioCaller(
            line.url, auth_token=line.auth_token, webhook_url=line.webhook_url, number=line.number
        )
        try:
            result = await caller.call(
                first,
                SAMPLE_RATE,
                then=list(zip(rest, s.pauses, strict=True)),
                gate=gate,
                greeting_quiet=GREETING_QUIET_SECS,
                greeting_timeout=greeting_timeout,
                hang_up_after_quiet=2.5,
                timeout=call_timeout,
            )
        except DialError as exc:  # a call refused at the webhook: the others go on
            failed.add(s.caller)
            check()
            refused = "<Reject" in str(exc) or "HTTP 503" in str(exc)
            return Call(script=s, refused=refused, error=str(exc)[:200], call_sid=caller.call_sid)
        except Exception as exc:  # reported as an error; the others go on
            failed.add(s.caller)
            check()
            message = f"{type(exc).__name__}: {exc}"[:200]
            return Call(script=s, error=message, call_sid=caller.call_sid)
        failed.add(s.caller)  # no longer holds the gate if it never reached it
        check()
        return analyse(s, result, underrun_secs)

    return list(await asyncio.gather(*(one(s) for s in scripts)))
