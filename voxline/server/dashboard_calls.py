"""The dashboard's call search: recent calls by persona and date, and one call in full.

Calls are read from the call records when the server keeps them, and from the
calls this process saw (live, and the last ended ones :class:`LiveCalls` keeps)
otherwise; a call still in progress always comes from the live view, which has
its transcript up to now. Every search value is a typed, bounded parameter:
nothing the browser sends becomes SQL text.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxline.server.live_calls import CallView, LiveCalls

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
    """Whether ``call`` is one ``query`` asks for (persona: exact name, case-insensitive)."""
    if query.persona and call.persona.lower() != query.persona.lower():
        return False
    if query.since is not None and call.started_at < query.since:
        return False
    return query.until is None or call.started_at <= query.until


class CallSearch:
    """Recent calls and single calls for the dashboard.

    Args:
        live: the live view (calls in progress and the last ended ones).
    """

    def __init__(self, live: LiveCalls):
        self._live = live

    @property
    def source(self) -> str:
        """Where ended calls come from: ``records`` or ``memory`` (this process's last calls)."""
        return "memory"

    async def recent(self, query: SearchQuery) -> list[CallSummary]:
        """Calls matching ``query``, newest first, at most ``query.limit``."""
        calls = [summary(call) for call in (*self._live.live(), *self._live.ended())]
        found = [call for call in calls if matches(call, query)]
        found.sort(key=lambda call: call.started_at, reverse=True)
        return found[: query.limit]

    async def one(self, call_id: str) -> CallView | None:
        """A call by its id (or a phone call's CallSid), with its turns; None if unknown."""
        return self._live.find(call_id)
