"""The dashboard's call search: recent calls by persona and date, and one call in full.

Calls are read from the call records (:class:`~voxline.records.store.RecordStore`'s
query API) when the server keeps them, together with the calls this process saw
(live, and the last ended ones :class:`LiveCalls` keeps), which covers the moment
between a call's end and its records being written; without records, or while
their database does not answer, only the latter. A call still in progress always
comes from the live view, which has its transcript up to now. Every search value
is a typed, bounded parameter: nothing the browser sends becomes SQL text.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxline import logcontent
from voxline.server.live_calls import CallView, Line, LiveCalls, ToolCall, TurnView, bars

if TYPE_CHECKING:
    from voxline.records.models import CallRecord
    from voxline.records.models import CallSummary as RecordSummary
    from voxline.records.store import RecordStore

MAX_LIMIT = 200


class SearchError(Exception):
    """A search that cannot be answered; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class SearchQuery(BaseModel):
    """``GET /dashboard/api/calls``' query: every field optional, every field bounded.

    Dates without a time zone are UTC.
    """

    model_config = ConfigDict(extra="forbid")

    persona: str = Field(default="", max_length=200)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("persona")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class CallSummary(BaseModel):
    """One line of the recent calls' list."""

    id: str
    call_sid: str | None = None
    persona: str
    transport: str
    caller: str = ""
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    turns: int = 0
    live: bool = False


def summary(call: CallView) -> CallSummary:
    """The list line of a call."""
    return CallSummary(
        id=call.id,
        call_sid=call.call_sid,
        persona=call.persona,
        transport=call.transport,
        caller=call.caller,
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        turns=len(call.turns),
        live=call.live,
    )


def matches(call: CallSummary, query: SearchQuery) -> bool:
    """Whether ``call`` is one ``query`` asks for (persona: its exact name)."""
    if query.persona and call.persona != query.persona:
        return False
    if query.since is not None and call.started_at < query.since:
        return False
    return query.until is None or call.started_at <= query.until


def shown_caller(transport: str, caller: str | None) -> str:
    """A phone number masked as in the log (whole with ``log_content``); a widget key as is."""
    if not caller:
        return ""
    return logcontent.number(caller) if transport == "twilio" else caller


def recorded_summary(call: RecordSummary) -> CallSummary:
    """The list line of a recorded call."""
    return CallSummary(
        id=call.id,
        call_sid=call.call_sid,
        persona=call.persona,
        transport=call.transport,
        caller=shown_caller(call.transport, call.caller),
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        turns=call.turns,
    )


def recorded_call(call: CallRecord) -> CallView:
    """The dashboard's view of a recorded call: its transcript as heard, its turns and bars."""
    lines = []
    if call.greeting_heard:
        lines.append(Line(who="bot", text=call.greeting_heard, at=call.started_at))
    turns = []
    for record in call.turn_records:
        at = record.started_at or call.started_at
        heard = record.bot_heard or record.bot_text
        if record.caller_text:
            lines.append(Line(who="caller", text=record.caller_text, at=at))
        if heard:
            lines.append(Line(who="bot", text=heard, at=at, interrupted=record.interrupted))
        # The timeline is in ms on the call's clock; bars() takes any one clock's ns.
        stamps = {
            name: None if value is None else value * 1e6
            for name, value in record.timeline_ms.items()
        }
        origin = record.timeline_ms.get("speech_end")
        tools = []
        for tool in record.tools:
            view = ToolCall(
                name=tool.name,
                arguments=tool.arguments,
                result=tool.result,
                duration_ms=tool.duration_ms,
            )
            if origin is not None and tool.started_ms is not None:
                view.start_ms = tool.started_ms - origin
                view.end_ms = view.start_ms + (tool.duration_ms or 0.0)
            tools.append(view)
        turns.append(
            TurnView(
                turn=record.turn,
                caller=record.caller_text,
                bot=record.bot_text,
                bot_heard=record.bot_heard,
                interrupted=record.interrupted,
                unfinished=not record.finished,
                error=record.error,
                tools=tools,
                latency_ms=record.latency_ms,
                bars=bars(stamps),
            )
        )
    return CallView(
        id=call.id,
        call_sid=call.call_sid,
        persona=call.persona,
        transport=call.transport,
        caller=shown_caller(call.transport, call.caller),
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        trace_id=call.trace_id,
        live=False,
        lines=lines,
        turns=turns,
    )


class CallSearch:
    """Recent calls and single calls for the dashboard.

    Args:
        live: the live view (calls in progress and the last ended ones).
        records: gives the records database now, or None (records off, or not open yet).
    """

    def __init__(self, live: LiveCalls, records: Callable[[], RecordStore | None] = lambda: None):
        self._live = live
        self._records = records
        self.source = "memory"
        """Where the last answer's ended calls came from: ``records`` or ``memory``."""

    async def recent(self, query: SearchQuery) -> list[CallSummary]:
        """Calls matching ``query``, newest first, at most ``query.limit``."""
        seen = [summary(call) for call in (*self._live.live(), *self._live.ended())]
        found = {call.id: call for call in seen if matches(call, query)}
        live = {call.id for call in seen if call.live}
        store, self.source = self._records(), "memory"
        if store is not None:
            try:
                recorded = await store.recent_calls(
                    persona=query.persona or None,
                    since=query.since,
                    until=query.until,
                    limit=query.limit,
                )
            except Exception as exc:  # the database is away: this process's calls still show
                logger.warning(f"dashboard: records cannot be read: {type(exc).__name__}")
            else:
                self.source = "records"
                for call in recorded:
                    if call.id not in live:
                        found[call.id] = recorded_summary(call)
        ordered = sorted(found.values(), key=lambda call: call.started_at, reverse=True)
        return ordered[: query.limit]

    async def one(self, call_id: str) -> CallView | None:
        """A call by its id (or a phone call's CallSid), with its turns; None if unknown.

        A live call comes from the live view; an ended one from the records when they
        have it, else from the calls this process kept.
        """
        kept = self._live.find(call_id)
        if kept is not None and kept.live:
            return kept
        store = self._records()
        if store is not None:
            try:
                record = await store.call(call_id)
            except Exception as exc:
                logger.warning(f"dashboard: records cannot be read: {type(exc).__name__}")
            else:
                if record is not None:
                    return recorded_call(record)
        return kept
