"""What the query API returns: pydantic models, ready for JSON (``model_dump(mode="json")``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class CallSummary(BaseModel):
    """One call in a list: who, when, how it ended and how many turns it had."""

    id: str
    call_sid: str | None
    persona: str
    transport: str
    caller: str | None
    called: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    trace_id: str | None
    turns: int

    @property
    def duration_secs(self) -> float | None:
        """How long the call lasted, once it ended."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class ToolCallRecord(BaseModel):
    """One tool call: its arguments and result (unless kept out), how long it ran."""

    seq: int
    name: str
    arguments: Any = None
    result: Any = None
    failed: bool
    started_ms: float | None
    duration_ms: float | None


class TurnRecord(BaseModel):
    """One caller turn with what both sides said and each stage's latency.

    ``timeline_ms`` gives each stage's moment in milliseconds since the call's
    pipeline started (a waterfall's time axis); ``latency_ms`` each stage's duration.
    ``bot_heard`` is what the caller heard of the reply (cut at a barge-in);
    ``bot_text`` what the LLM wrote. ``finished`` is False for the turn in progress
    when the call ended.
    """

    turn: int
    finished: bool
    started_at: datetime | None
    caller_text: str
    bot_text: str
    bot_heard: str | None = None
    interrupted: bool
    error: str | None
    latency_ms: dict[str, float | None]
    timeline_ms: dict[str, float | None]
    turn_taking: dict[str, Any]
    llm_usage: dict[str, int]
    tools: list[ToolCallRecord] = []


class CallRecord(CallSummary):
    """One call with everything recorded: the greeting as heard and every turn."""

    greeting_heard: str | None = None
    turn_records: list[TurnRecord] = []
