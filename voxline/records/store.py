"""The records database: open it, write rows, and read calls back (the query API).

One :class:`RecordStore` per process, on SQLAlchemy's asyncio engine: SQLite
through aiosqlite (its queries run in aiosqlite's thread, never on the event loop)
or PostgreSQL through psycopg 3 (asynchronous I/O). Every query is parameterised:
a persona name or a call id is a value, never SQL.

The query API, for ``voxline calls`` and the dashboard:

* :meth:`RecordStore.recent_calls` -- calls, newest first, by persona and time;
* :meth:`RecordStore.call` -- one call by its id (or a unique prefix of 6+ hex digits)
  or its Twilio CallSid, with its turns, tool calls and what the caller heard.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from voxline.records.models import CallRecord, CallSummary, ToolCallRecord, TurnRecord
from voxline.records.schema import (
    CALL_TABLES,
    calls,
    heard,
    metadata,
    migrate,
    tool_calls,
    turns,
)
from voxline.records.settings import default_records_path, driver_url, shown_url

CONNECT_TIMEOUT_SECS = 5
MAX_LIST = 1000
HEX_PREFIX = re.compile(r"[0-9a-f]{6,32}")
MAX_ID_CHARS = 64


class RecordsUnavailableError(RuntimeError):
    """The records database cannot be opened; the message is one line naming the URL."""


def records_url_or_default(url: str | None) -> str:
    """``url``, or the default SQLite file's URL when it is None."""
    return url if url is not None else f"sqlite:///{default_records_path()}"


class RecordStore:
    """The records database.

    Args:
        url: ``sqlite:///path`` or ``postgresql://...`` (already checked by the config);
            None for the default SQLite file.
    """

    def __init__(self, url: str | None = None):
        self.url = records_url_or_default(url)
        self.shown_url = shown_url(self.url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine: AsyncEngine = self._create_engine()

    def _create_engine(self) -> AsyncEngine:
        if self.is_sqlite:
            return create_async_engine(
                driver_url(self.url), connect_args={"timeout": CONNECT_TIMEOUT_SECS}
            )
        return create_async_engine(
            driver_url(self.url),
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=2,
            pool_timeout=CONNECT_TIMEOUT_SECS,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECS},
        )

    async def open(self, *, create: bool = True) -> None:
        """Connect once and create or migrate the schema (``create=False``: only check).

        Raises:
            RecordsUnavailableError: the database cannot be reached or used.
        """
        if self.is_sqlite:
            path = Path(self.url.removeprefix("sqlite:///"))
            if not create and not path.is_file():
                raise RecordsUnavailableError(f"no records yet: {path} does not exist")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RecordsUnavailableError(
                    f"records database {self.shown_url}: cannot create {path.parent}: "
                    f"{exc.strerror or exc}"
                ) from None
        # Two processes starting together on one database (two pods, two serves
        # behind a balancer) can both find a table missing. PostgreSQL serialises
        # them on an advisory lock (see migrate); SQLite commits each CREATE on its own, so a
        # loser fails with "already exists" once per table another process made,
        # and every retry finds more of the schema there.
        attempts = len(metadata.tables) + 1
        for attempt in range(attempts):
            try:
                async with self.engine.begin() as connection:
                    if self.is_sqlite:
                        await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                    if create:
                        await migrate(connection)
                return
            except Exception as exc:
                if attempt < attempts - 1 and "already exists" in str(exc):
                    continue
                raise RecordsUnavailableError(
                    f"records database {self.shown_url} cannot be reached: {one_line(exc)}"
                ) from None

    async def close(self) -> None:
        """Close the connection pool."""
        await self.engine.dispose()

    # Writes: each takes a connection inside the writer's transaction.

    def _upsert(self, table, values: Mapping[str, Any], keys: Sequence[str]):
        dialect = sqlite if self.is_sqlite else postgresql
        statement = dialect.insert(table).values(**values)
        changed = {name: statement.excluded[name] for name in values if name not in keys}
        if not changed:
            return statement.on_conflict_do_nothing(index_elements=list(keys))
        return statement.on_conflict_do_update(index_elements=list(keys), set_=changed)

    async def write_call(self, connection: AsyncConnection, values: Mapping[str, Any]) -> None:
        """Insert (or refresh) a call's row."""
        await connection.execute(self._upsert(calls, values, ["id"]))

    async def end_call(self, connection: AsyncConnection, call_id: str, **values: Any) -> None:
        """Set a call's end (``ended_at``, ``end_reason``, ``trace_id``)."""
        await connection.execute(update(calls).where(calls.c.id == call_id).values(**values))

    async def write_turn(
        self,
        connection: AsyncConnection,
        values: Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert (or replace) a turn and its tool calls."""
        await connection.execute(self._upsert(turns, values, ["call_id", "turn"]))
        for tool in tools:
            await connection.execute(self._upsert(tool_calls, tool, ["call_id", "turn", "seq"]))

    async def write_heard(self, connection: AsyncConnection, values: Mapping[str, Any]) -> None:
        """Insert what the caller heard of one reply."""
        await connection.execute(self._upsert(heard, values, ["call_id", "seq"]))

    async def purge(self, older_than_days: float) -> int:
        """Delete calls that started more than ``older_than_days`` ago; how many went."""
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        async with self.engine.begin() as connection:
            old = select(calls.c.id).where(calls.c.started_at < cutoff)
            for table in CALL_TABLES[1:]:
                await connection.execute(delete(table).where(table.c.call_id.in_(old)))
            result = await connection.execute(delete(calls).where(calls.c.started_at < cutoff))
            return result.rowcount or 0

    # The query API.

    async def recent_calls(
        self,
        *,
        persona: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[CallSummary]:
        """Calls newest first, at most ``limit`` (capped at 1000).

        Args:
            persona: only this persona's calls (exact name).
            since: only calls that started at or after this moment (aware datetime).
            until: only calls that started before this moment.
            limit: how many at most.
        """
        count = (
            select(func.count())
            .select_from(turns)
            .where(turns.c.call_id == calls.c.id)
            .scalar_subquery()
        )
        query = select(calls, count.label("turns")).order_by(calls.c.started_at.desc())
        if persona is not None:
            query = query.where(calls.c.persona == persona)
        if since is not None:
            query = query.where(calls.c.started_at >= utc(since))
        if until is not None:
            query = query.where(calls.c.started_at < utc(until))
        query = query.limit(max(1, min(limit, MAX_LIST)))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [CallSummary(**_aware(dict(row))) for row in rows]

    async def call(self, call_id: str) -> CallRecord | None:
        """One call with its turns, by record id, a unique id prefix, or Twilio CallSid.

        Returns None when no call matches (or a prefix matches several).
        """
        call_id = call_id.strip()
        if not call_id or len(call_id) > MAX_ID_CHARS:
            return None
        async with self.engine.connect() as connection:
            row = await self._find_call(connection, call_id)
            if row is None:
                return None
            found = row["id"]
            turn_rows = (
                await connection.execute(
                    select(turns).where(turns.c.call_id == found).order_by(turns.c.turn)
                )
            ).mappings()
            tool_rows = (
                await connection.execute(
                    select(tool_calls)
                    .where(tool_calls.c.call_id == found)
                    .order_by(tool_calls.c.turn, tool_calls.c.seq)
                )
            ).mappings()
            heard_rows = (
                await connection.execute(
                    select(heard).where(heard.c.call_id == found).order_by(heard.c.seq)
                )
            ).mappings()
            turn_list = [dict(turn) for turn in turn_rows]
            tools_by_turn: dict[int, list[ToolCallRecord]] = {}
            for tool in tool_rows:
                tools_by_turn.setdefault(tool["turn"], []).append(ToolCallRecord(**tool))
            heard_by_turn: dict[int, list[str]] = {}
            for line in heard_rows:
                text = line["text"] + (" [interrupted]" if line["interrupted"] else "")
                heard_by_turn.setdefault(line["turn"], []).append(text)
        records = [
            TurnRecord(
                **_aware(turn),
                bot_heard=" ".join(heard_by_turn.get(turn["turn"], [])) or None,
                tools=tools_by_turn.get(turn["turn"], []),
            )
            for turn in turn_list
        ]
        greeting = " ".join(heard_by_turn.get(0, [])) or None
        return CallRecord(
            **_aware(dict(row)),
            turns=len(records),
            greeting_heard=greeting,
            turn_records=records,
        )

    async def _find_call(self, connection: AsyncConnection, call_id: str):
        exact = select(calls).where((calls.c.id == call_id) | (calls.c.call_sid == call_id))
        row = (await connection.execute(exact.limit(1))).mappings().first()
        if row is not None or not HEX_PREFIX.fullmatch(call_id):
            return row
        # A prefix of hex digits only: no LIKE wildcard can be in it.
        prefix = select(calls).where(calls.c.id.like(f"{call_id}%")).limit(2)
        rows = (await connection.execute(prefix)).mappings().all()
        return rows[0] if len(rows) == 1 else None


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite gives naive datetimes back: they were written in UTC."""
    for name, value in row.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            row[name] = value.replace(tzinfo=UTC)
    return row


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken as UTC): SQLite stores no time zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def one_line(exc: BaseException) -> str:
    """An exception as one short line (drivers' messages can span several)."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text[:300]
