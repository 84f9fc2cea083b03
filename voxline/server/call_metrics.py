"""Per-call metrics: stage latency histograms, turns, tool failures and how calls ended.

A :class:`CallMetrics` is a listener on the Runtime's call events
(:mod:`voxline.bot.call_events`): every finished turn's trace feeds one histogram
observation per stage it reached, and every ended call one count under the reason
it ended for. The observations are made on the event loop when a turn ends
(a few dictionary updates, nothing that waits); ``/metrics`` renders them.

Labels stay few and bounded: ``persona`` (the personas a server was started with),
``stage`` (:data:`~voxline.processors.turn_trace.STAGES`), ``outcome`` and ``reason``
(fixed lists below). A call's free-form end reason is mapped to one of
:data:`END_REASONS`, never used as is.
"""

from __future__ import annotations

from collections import Counter as Counts

from prometheus_client import CollectorRegistry, Counter, Histogram

from voxline.bot.call_events import CallInfo, CallListener
from voxline.processors.turn_trace import TurnTrace

STAGE_BUCKETS = (
    0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8,
    1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 15.0,
)  # fmt: skip
"""Seconds: fine below a second, where the latency budget lives; coarse above."""

TURN_OUTCOMES = ("answered", "interrupted", "failed", "unfinished")

END_REASONS = {
    "caller hung up": "caller_hung_up",
    "browser disconnected": "caller_hung_up",
    "media stream closed": "connection_lost",
    "browser vanished (ICE failed)": "connection_lost",
    "browser stopped sending audio": "connection_lost",
    "the bot ended the call": "bot_ended",
    "call time limit": "time_limit",
    "ended": "ended",
}
"""Known end reasons -> the ``reason`` label (others: ``idle``, ``error`` or ``other``)."""

END_REASON_LABELS = (
    "caller_hung_up", "connection_lost", "bot_ended", "time_limit", "idle", "error",
    "ended", "other",
)  # fmt: skip


def end_reason_label(reason: str | None) -> str:
    """A call's end reason as a bounded label value (one of :data:`END_REASON_LABELS`)."""
    if not reason:
        return "ended"
    if reason in END_REASONS:
        return END_REASONS[reason]
    lowered = reason.lower()
    if "idle" in lowered or "silent" in lowered:
        return "idle"
    if "error" in lowered or "fail" in lowered or "can no longer" in lowered:
        return "error"
    return "other"


def turn_outcome(turn: TurnTrace) -> str:
    """``answered``, ``interrupted`` (by the caller), ``failed`` (an error) or ``unfinished``."""
    if not turn.complete:
        return "unfinished"
    if turn.error is not None:
        return "failed"
    return "interrupted" if turn.interrupted else "answered"


def _tool_failed(call: dict[str, object]) -> bool:
    result = call.get("result")
    return isinstance(result, dict) and "error" in result


class CallMetrics(CallListener):
    """Histograms and counters fed by call events, registered on one server's registry.

    Args:
        registry: the server's own registry (``/metrics`` renders it).
        errors: the Runtime's error counts by kind; failed tool calls add to ``tool``.
    """

    def __init__(self, registry: CollectorRegistry, errors: Counts[str]):
        self._errors = errors
        self.stage_seconds = Histogram(
            "voxline_turn_stage_seconds",
            "Latency of each stage of a caller turn (stt, llm_first_token, first_chunk, "
            "tts_first_audio, transport, voice_to_voice, commit).",
            ["persona", "stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.turns = Counter(
            "voxline_turns",
            "Caller turns, by outcome: answered, interrupted, failed, unfinished (the "
            "call ended during the turn).",
            ["persona", "outcome"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "voxline_tool_calls",
            "Tool calls the LLM made, by whether they failed.",
            ["persona", "failed"],
            registry=registry,
        )
        self.underruns = Counter(
            "voxline_audio_underruns",
            "Gaps of 60 ms or more the caller heard inside the bot's speech: the audio "
            "before had played out and the next came late (phone calls; the output's model "
            "of the caller's playout).",
            ["persona", "transport"],
            registry=registry,
        )
        self.underrun_seconds = Counter(
            "voxline_audio_underrun_seconds",
            "Seconds of those gaps, summed.",
            ["persona", "transport"],
            registry=registry,
        )
        self.calls_ended = Counter(
            "voxline_calls_ended",
            "Calls that ended, by reason: caller_hung_up, connection_lost, bot_ended, "
            "time_limit, idle, error, ended (the pipeline finished), other.",
            ["persona", "transport", "reason"],
            registry=registry,
        )

    def observe_turn(self, persona: str, turn: TurnTrace) -> None:
        """Count one turn and observe every stage it reached."""
        for stage, millis in turn.latencies_ms().items():
            if millis is not None and millis >= 0:
                self.stage_seconds.labels(persona, stage).observe(millis / 1000)
        self.turns.labels(persona, turn_outcome(turn)).inc()
        for call in turn.tool_calls:
            failed = _tool_failed(call)
            self.tool_calls.labels(persona, "true" if failed else "false").inc()
            if failed:
                self._errors["tool"] += 1

    def turn_finished(self, info: CallInfo, turn: TurnTrace) -> None:
        """A turn is over: observe it."""
        self.observe_turn(info.persona, turn)

    def call_started(self, info: CallInfo) -> None:
        """A call started: its underrun series exist from now on, at 0 until one comes."""
        if info.transport == "twilio":
            self.underruns.labels(info.persona, info.transport)
            self.underrun_seconds.labels(info.persona, info.transport)

    def audio_underrun(self, info: CallInfo, secs: float) -> None:
        """The caller ran out of the bot's audio in mid-speech for ``secs``: count it."""
        self.underruns.labels(info.persona, info.transport).inc()
        self.underrun_seconds.labels(info.persona, info.transport).inc(secs)

    def call_ended(self, info: CallInfo, reason: str, unfinished: TurnTrace | None) -> None:
        """A call ended: count it by reason, and the turn it ended during, if any."""
        if unfinished is not None:
            self.observe_turn(info.persona, unfinished)
        self.calls_ended.labels(info.persona, info.transport, end_reason_label(reason)).inc()
