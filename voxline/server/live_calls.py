"""What the dashboard shows of calls in progress: a bounded in-memory view fed by the call hub.

:class:`LiveCalls` is a :class:`~voxline.bot.call_events.CallListener`. It keeps,
for each call in progress, its transcript as it is said (the caller's transcripts
and the bot's words as their audio goes out) and its finished turns with their
latency traces; the last few ended calls stay for a while, so a call just over
can be opened before (or without) the call records. Every list is bounded: calls
by ``max_calls``, transcript lines and turns per call, ended calls and the stage
samples of the last hour, so a flood of calls or a call that talks for hours
costs a fixed amount of memory.

Every listener method returns at once (it only appends to bounded containers),
as the hub asks. The stage statistics (p50/p95 per stage over the last hour)
are computed from the turns this process finished.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from voxline import logcontent
from voxline.bot.call_events import CallInfo, CallListener
from voxline.processors.turn_trace import TurnTrace

MAX_LIVE_CALLS = 1_000
"""Calls in progress held at once; admission caps real calls far below this."""
MAX_LINES = 200
"""Transcript lines kept per call (the oldest are dropped)."""
MAX_TURNS = 200
"""Turn traces kept per call."""
MAX_TEXT = 4_000
"""Characters kept of one transcript line or one turn's text."""
MAX_ENDED = 100
"""Ended calls kept for the dashboard."""
MAX_SAMPLES = 50_000
"""Turns kept for the stage statistics (and never older than an hour)."""
STATS_WINDOW_SECS = 3_600.0

WATERFALL_STAGES = (
    "commit",
    "stt",
    "llm_first_token",
    "first_chunk",
    "tts_first_audio",
    "transport",
)
"""The waterfall's bars, in order: end of turn (commit), STT, LLM first token, first
speakable chunk, TTS first audio, and the audio on its way to the caller (heard)."""
STAT_STAGES = (*WATERFALL_STAGES, "voice_to_voice")


class Line(BaseModel):
    """One line of a live transcript; a bot line the caller cut off is ``interrupted``."""

    who: Literal["caller", "bot"]
    text: str
    at: datetime
    interrupted: bool = False


class Bar(BaseModel):
    """One stage of a turn on the waterfall's axis, in ms from the caller's last word."""

    stage: str
    start_ms: float
    end_ms: float


class ToolCall(BaseModel):
    """A tool the LLM called in a turn; its times are on the waterfall's axis (ms)."""

    name: str
    arguments: object = None
    result: object = None
    duration_ms: float | None = None
    start_ms: float | None = None
    end_ms: float | None = None


class TurnView(BaseModel):
    """One caller turn: what was said, its tools, its stage latencies and its bars."""

    turn: int
    caller: str = ""
    bot: str = ""
    bot_heard: str | None = None
    """What the caller heard of the reply, when it is known (call records)."""
    interrupted: bool = False
    unfinished: bool = False
    error: str | None = None
    tools: list[ToolCall] = []
    latency_ms: dict[str, float | None] = {}
    bars: list[Bar] = []


class CallView(BaseModel):
    """A call as the dashboard shows it: who, when, the transcript and the turns."""

    id: str
    call_sid: str | None = None
    persona: str
    transport: str
    caller: str = ""
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    trace_id: str | None = None
    live: bool = True
    lines: list[Line] = []
    turns: list[TurnView] = []


class StageStat(BaseModel):
    """A stage's latency percentiles over the window."""

    stage: str
    count: int
    p50_ms: float | None
    p95_ms: float | None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def bars(stamps: dict[str, int | None]) -> list[Bar]:
    """The waterfall's bars from one turn's stage timestamps (any clock, in ns).

    Args:
        stamps: ``speech_end``, ``committed``, ``stt_request``, ``transcribed``,
            ``llm_first_token``, ``first_chunk``, ``tts_first_audio`` and
            ``audio_out``, None where the stage did not happen.

    Returns:
        A bar per stage that has both ends, in ms from the caller's last word
        (from the earliest known time when that is unknown).
    """
    known = [value for value in stamps.values() if value is not None]
    if not known:
        return []
    origin = stamps.get("speech_end") or min(known)
    ready = [t for t in (stamps.get("tts_first_audio"), stamps.get("committed")) if t is not None]
    spans = {
        "commit": (stamps.get("speech_end"), stamps.get("committed")),
        "stt": (stamps.get("stt_request"), stamps.get("transcribed")),
        "llm_first_token": (stamps.get("transcribed"), stamps.get("llm_first_token")),
        "first_chunk": (stamps.get("llm_first_token"), stamps.get("first_chunk")),
        "tts_first_audio": (stamps.get("first_chunk"), stamps.get("tts_first_audio")),
        # Audio ready before the commit waits for it: the last leg starts at the later.
        "transport": (max(ready) if ready else None, stamps.get("audio_out")),
    }
    return [
        Bar(stage=stage, start_ms=(start - origin) / 1e6, end_ms=(end - origin) / 1e6)
        for stage, (start, end) in spans.items()
        if start is not None and end is not None and end >= start
    ]


def turn_view(turn: TurnTrace, *, unfinished: bool = False) -> TurnView:
    """The dashboard's view of a :class:`TurnTrace` from the latency tracer."""
    stamps = {
        name: getattr(turn, name)
        for name in (
            "speech_end",
            "committed",
            "stt_request",
            "transcribed",
            "llm_first_token",
            "first_chunk",
            "tts_first_audio",
            "audio_out",
        )
    }
    known = [value for value in stamps.values() if value is not None]
    origin = turn.speech_end or (min(known) if known else None)
    tools = []
    for index, call in enumerate(turn.tool_calls):
        started, returned = turn.tool_times[index] if index < len(turn.tool_times) else (None, None)
        tool = ToolCall(
            name=str(call.get("name", "?")),
            arguments=call.get("arguments"),
            result=call.get("result"),
        )
        if started is not None and returned is not None:
            tool.duration_ms = round((returned - started) / 1e6, 1)
            if origin is not None:
                tool.start_ms = (started - origin) / 1e6
                tool.end_ms = (returned - origin) / 1e6
        tools.append(tool)
    return TurnView(
        turn=turn.index,
        caller=_clip(turn.caller_text),
        bot=_clip(turn.bot_text.strip()),
        interrupted=turn.interrupted,
        unfinished=unfinished or not turn.complete,
        error=turn.error,
        tools=tools,
        latency_ms=turn.latencies_ms(),
        bars=bars(stamps),
    )


class _Call:
    """One call's bounded state."""

    def __init__(self, info: CallInfo):
        self.info = info
        self.lines: deque[Line] = deque(maxlen=MAX_LINES)
        self.turns: deque[TurnView] = deque(maxlen=MAX_TURNS)
        self.ended_at: datetime | None = None
        self.end_reason: str | None = None

    def say(self, who: Literal["caller", "bot"], text: str) -> None:
        last = self.lines[-1] if self.lines else None
        if who == "bot" and last is not None and last.who == "bot":
            # The bot's words come a few at a time: they make one line per reply.
            last.text = _clip(f"{last.text} {text.strip()}".strip())
            return
        self.lines.append(Line(who=who, text=_clip(text.strip()), at=datetime.now(UTC)))

    def heard(self, text: str) -> None:
        """A reply the caller cut off: its line becomes what the caller heard of it."""
        for line in reversed(self.lines):
            if line.who == "bot":
                line.text, line.interrupted = _clip(text), True
                return

    def view(self, *, live: bool) -> CallView:
        info = self.info
        return CallView(
            id=info.call_id,
            call_sid=info.call_sid,
            persona=info.persona,
            transport=info.transport,
            caller=logcontent.number(info.caller) if info.transport == "twilio" else info.caller,
            started_at=info.started_at,
            ended_at=self.ended_at or info.ended_at,
            end_reason=self.end_reason or info.end_reason,
            trace_id=info.trace_id,
            live=live,
            lines=[line.model_copy() for line in self.lines],
            turns=list(self.turns),
        )


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 1)


class LiveCalls(CallListener):
    """The dashboard's listener on the call hub: live calls, recently ended ones, stage stats.

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._live: dict[str, _Call] = {}
        self._ended: deque[_Call] = deque(maxlen=MAX_ENDED)
        self._samples: deque[tuple[float, dict[str, float | None]]] = deque(maxlen=MAX_SAMPLES)
        self.version = 0
        """Bumped on every change, so a poller can skip an unchanged view."""
        self.dropped_calls = 0
        """Calls not shown because :data:`MAX_LIVE_CALLS` were live already."""

    # -- the hub's events -------------------------------------------------------------

    def call_started(self, info: CallInfo) -> None:
        """A call started: show it."""
        if len(self._live) >= MAX_LIVE_CALLS:
            self.dropped_calls += 1
            return
        self._live[info.call_id] = _Call(info)
        self.version += 1

    def caller_said(self, info: CallInfo, text: str) -> None:
        """The caller's words, as transcribed."""
        self._say(info, "caller", text)

    def bot_said(self, info: CallInfo, text: str) -> None:
        """The bot's words, as their audio goes out."""
        self._say(info, "bot", text)

    def bot_heard(self, info: CallInfo, turn: int, text: str, interrupted: bool) -> None:
        """What the caller heard of a reply: a cut-off reply's line is cut to it."""
        if interrupted and (call := self._live.get(info.call_id)) is not None:
            call.heard(text)
            self.version += 1

    def turn_finished(self, info: CallInfo, turn: TurnTrace) -> None:
        """A turn is over: its trace joins the call and the stage statistics."""
        latencies = turn.latencies_ms()
        self._samples.append((self._clock(), latencies))
        if (call := self._live.get(info.call_id)) is not None:
            call.turns.append(turn_view(turn))
            self.version += 1

    def call_ended(self, info: CallInfo, reason: str, unfinished: TurnTrace | None) -> None:
        """The call ended: it moves to the recently ended calls."""
        call = self._live.pop(info.call_id, None)
        if call is None:
            return
        call.ended_at = info.ended_at or datetime.now(UTC)
        call.end_reason = reason
        if unfinished is not None:
            call.turns.append(turn_view(unfinished, unfinished=True))
        self._ended.appendleft(call)
        self.version += 1

    def _say(self, info: CallInfo, who: Literal["caller", "bot"], text: str) -> None:
        if text and (call := self._live.get(info.call_id)) is not None:
            call.say(who, text)
            self.version += 1

    # -- what the dashboard reads -----------------------------------------------------

    def live(self) -> list[CallView]:
        """Calls in progress, the oldest first."""
        return [call.view(live=True) for call in self._live.values()]

    def ended(self) -> list[CallView]:
        """Calls that ended since the process started (the last :data:`MAX_ENDED`), newest first."""
        return [call.view(live=False) for call in self._ended]

    def find(self, call_id: str) -> CallView | None:
        """A live or recently ended call by its id or its Twilio CallSid."""
        for call, live in self._all():
            if call_id in (call.info.call_id, call.info.call_sid):
                return call.view(live=live)
        return None

    def _all(self) -> Iterable[tuple[_Call, bool]]:
        yield from ((call, True) for call in self._live.values())
        yield from ((call, False) for call in self._ended)

    def stage_stats(self) -> list[StageStat]:
        """p50 and p95 of each stage over the turns finished in the last hour."""
        horizon = self._clock() - STATS_WINDOW_SECS
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        stats = []
        for stage in STAT_STAGES:
            values = [
                value
                for _, latencies in self._samples
                if (value := latencies.get(stage)) is not None
            ]
            stats.append(
                StageStat(
                    stage=stage,
                    count=len(values),
                    p50_ms=percentile(values, 0.5),
                    p95_ms=percentile(values, 0.95),
                )
            )
        return stats
