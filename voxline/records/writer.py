"""Writes call records as calls go, off the audio path.

:class:`RecordWriter` is a call listener (:mod:`voxline.bot.call_events`). Each event
becomes a row (a call started, a turn finished, a reply heard, a call ended) put on
a bounded queue at once; one writer task takes rows off the queue and writes
them, several per transaction. The call's own task never waits for the database.

* A slow database: rows wait in the queue; audio is not delayed.
* A database that goes away mid-call (or a full disk): the write fails, the error
  is logged once and counted (:attr:`RecordWriter.write_errors`), and the same rows
  are tried again, with a growing pause (0.2 s to 5 s), until it answers; rows
  waiting meanwhile are counted by :attr:`RecordWriter.waiting`. Rows beyond
  ``records.max_waiting`` are dropped and counted (:attr:`RecordWriter.dropped`).
* A crash loses at most what was waiting: each turn is written when it finishes.

Writes are upserts keyed on the call id, so a row tried again after a commit whose
answer was lost is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from voxline.bot.call_events import CallEvents, CallInfo, CallListener
from voxline.config import ServerConfig
from voxline.processors.turn_trace import TurnTrace
from voxline.records.settings import RecordsConfig
from voxline.records.store import RecordStore, RecordsUnavailableError, one_line

Row = Callable[[AsyncConnection], Awaitable[None]]

BATCH = 64
RETRY_MIN_SECS, RETRY_MAX_SECS = 0.2, 5.0
PURGE_INTERVAL_SECS = 3600.0
MAX_TEXT = 20_000
TIMELINE = (
    "speech_end",
    "stt_request",
    "transcribed",
    "llm_first_token",
    "first_chunk",
    "tts_first_audio",
    "committed",
    "audio_out",
    "llm_done_at",
    "ended",
)
TRANSIENT = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    RecordsUnavailableError,
    OSError,
    TimeoutError,
)
"""Errors after which the same rows are tried again: the database is away or full."""


class RecordWriter(CallListener):
    """Records every call the Runtime reports, through a bounded queue and one writer task.

    Attributes (read by ``/metrics``):
        waiting: rows not yet written (queued or being written).
        written: rows written.
        dropped: rows given up (the queue was full, or the database refused the row).
        write_errors: failed writes (each retry of a failing write counts).
        database_up: whether the last write succeeded.

    Args:
        store: the records database.
        settings: the ``records:`` section (what to keep, how many rows may wait).
        ready: the schema was created already (``store.open()`` succeeded).
    """

    def __init__(self, store: RecordStore, settings: RecordsConfig, *, ready: bool = True):
        self.store = store
        self.settings = settings
        self._queue: asyncio.Queue[Row] = asyncio.Queue(maxsize=settings.max_waiting)
        self._ready = ready
        self._in_flight = 0
        self._heard_seq: dict[str, int] = {}
        self._traced: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_full = False
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.database_up = ready

    @property
    def waiting(self) -> int:
        """Rows not written yet."""
        return self._queue.qsize() + self._in_flight

    def start(self) -> None:
        """Start the writer task (and the retention task, if records expire)."""
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._run(), name="records-writer"))
            if self.settings.retention_days is not None:
                self._tasks.append(asyncio.create_task(self._purge(), name="records-retention"))

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is waiting (for at most ``timeout`` seconds), then stop."""
        if self._tasks:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                logger.error(
                    f"records: {self.waiting} records not written at shutdown: "
                    f"{self.store.shown_url} did not take them in {timeout:.0f} s"
                )
                self.dropped += self.waiting
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    # The call listener: each event becomes a row on the queue, at once.

    def call_started(self, info: CallInfo) -> None:
        """Write the call's row."""
        keep_number = self.settings.keep_caller_numbers or info.transport != "twilio"
        values = {
            "id": info.call_id,
            "call_sid": info.call_sid,
            "persona": info.persona,
            "transport": info.transport,
            "caller": _text(info.caller) if keep_number and info.caller else None,
            "called": info.called if self.settings.keep_caller_numbers else None,
            "started_at": info.started_at.astimezone(UTC),
            "ended_at": None,
            "end_reason": None,
            "trace_id": info.trace_id,
        }
        self._put(functools.partial(self.store.write_call, values=values))

    def turn_finished(self, info: CallInfo, turn: TurnTrace) -> None:
        """Write the turn, its stages and its tool calls."""
        if info.trace_id and info.call_id not in self._traced:
            # Tracing may name the trace after the call's row was queued.
            self._traced.add(info.call_id)
            update = functools.partial(
                self.store.end_call, call_id=info.call_id, trace_id=info.trace_id
            )
            self._put(update)
        self._put_turn(info, turn, finished=True)

    def bot_heard(self, info: CallInfo, turn: int, text: str, interrupted: bool) -> None:
        """Write what the caller heard of a reply."""
        seq = self._heard_seq.get(info.call_id, 0) + 1
        self._heard_seq[info.call_id] = seq
        values = {
            "call_id": info.call_id,
            "seq": seq,
            "turn": turn,
            "text": _text(text),
            "interrupted": interrupted,
            "at": datetime.now(UTC),
        }
        self._put(functools.partial(self.store.write_heard, values=values))

    def call_ended(self, info: CallInfo, reason: str, unfinished: TurnTrace | None) -> None:
        """Write the turn in progress (marked unfinished), then the call's end."""
        if unfinished is not None:
            self._put_turn(info, unfinished, finished=False)
        self._heard_seq.pop(info.call_id, None)
        self._traced.discard(info.call_id)
        ended = (info.ended_at or datetime.now(UTC)).astimezone(UTC)
        values = {"ended_at": ended, "end_reason": _text(reason), "trace_id": info.trace_id}
        self._put(functools.partial(self.store.end_call, call_id=info.call_id, **values))

    def _put_turn(self, info: CallInfo, turn: TurnTrace, *, finished: bool) -> None:
        summary = turn.as_dict()
        values = {
            "call_id": info.call_id,
            "turn": turn.index,
            "finished": finished,
            "started_at": info.wall_time(turn.speech_end or turn.transcribed),
            "caller_text": _text(turn.caller_text),
            "bot_text": _text(turn.bot_text.strip()),
            "interrupted": turn.interrupted,
            "error": None if turn.error is None else _text(str(turn.error)),
            "latency_ms": turn.latencies_ms(),
            "timeline_ms": {
                name: None if (moment := getattr(turn, name, None)) is None else moment / 1e6
                for name in TIMELINE
            },
            "turn_taking": _jsonable(summary.get("turn_taking") or {}),
            "llm_usage": dict(getattr(turn, "llm_usage", {}) or {}),
        }
        times = list(getattr(turn, "tool_times", []))
        tools = []
        for seq, call in enumerate(turn.tool_calls, start=1):
            started, returned = times[seq - 1] if seq <= len(times) else (None, None)
            result = call.get("result")
            keep = self.settings.keep_tool_arguments
            tools.append(
                {
                    "call_id": info.call_id,
                    "turn": turn.index,
                    "seq": seq,
                    "name": _text(str(call.get("name", "")))[:200],
                    "arguments": _jsonable(call.get("arguments")) if keep else None,
                    "result": _jsonable(result) if keep else None,
                    "failed": isinstance(result, dict) and "error" in result,
                    "started_ms": None if started is None else started / 1e6,
                    "duration_ms": (
                        None
                        if started is None or returned is None
                        else round((returned - started) / 1e6, 1)
                    ),
                }
            )
        self._put(functools.partial(self.store.write_turn, values=values, tools=tools))

    def _put(self, row: Row) -> None:
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                logger.error(
                    f"records: {self.waiting} records waiting for {self.store.shown_url} "
                    "(records.max_waiting): new records are dropped and counted"
                )

    # The writer task.

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = len(batch)
            try:
                await self._write(batch)
            finally:
                self._in_flight = 0
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[Row]) -> None:
        """Write ``batch`` in one transaction, trying again while the database is away."""
        pause, since = RETRY_MIN_SECS, None
        while True:
            try:
                if not self._ready:
                    await self.store.open()
                    self._ready = True
                async with self.store.engine.begin() as connection:
                    for row in batch:
                        await row(connection)
            except TRANSIENT as exc:
                self.write_errors += 1
                if since is None and self.database_up:
                    logger.error(
                        f"records: cannot write to {self.store.shown_url}: {one_line(exc)}; "
                        f"the calls go on, {self.waiting} records wait and are retried"
                    )
                since = since or time.monotonic()
                self.database_up = False
                await asyncio.sleep(pause)  # a retry interval, not synchronisation
                pause = min(pause * 2, RETRY_MAX_SECS)
                continue
            except Exception as exc:
                if len(batch) > 1:  # find the row the database refuses; write the others
                    for row in batch:
                        await self._write([row])
                    return
                self.write_errors += 1
                self.dropped += 1
                logger.error(f"records: a record was refused and dropped: {one_line(exc)}")
                return
            self.written += len(batch)
            if not self.database_up:
                self.database_up, self._warned_full = True, False
                logger.info(
                    f"records: {self.store.shown_url} answers again; writing "
                    f"{self.waiting} waiting records"
                )
            return

    async def _purge(self) -> None:
        days = self.settings.retention_days
        assert days is not None
        while True:
            with contextlib.suppress(*TRANSIENT):
                if self._ready:
                    removed = await self.store.purge(days)
                    if removed:
                        logger.info(f"records: {removed} calls older than {days:g} days deleted")
            await asyncio.sleep(PURGE_INTERVAL_SECS)  # the retention interval


def _text(value: str) -> str:
    """Text as a column takes it: no NUL characters (PostgreSQL refuses them), bounded."""
    return value.replace("\x00", "")[:MAX_TEXT]


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (what cannot be serialised becomes its text)."""
    try:
        return json.loads(json.dumps(value, default=str, allow_nan=False).replace("\\u0000", ""))
    except (TypeError, ValueError):
        return _text(str(value))


async def open_writer(config: ServerConfig) -> RecordWriter | None:
    """The records writer for ``serve`` (None when ``records.enabled`` is false).

    The database is reached and its schema created or migrated now.

    Raises:
        RecordsUnavailableError: it cannot be reached and ``records.optional`` is false.
    """
    settings = config.records
    if not settings.enabled:
        return None
    store = RecordStore(config.records_url)
    try:
        await store.open()
    except RecordsUnavailableError as exc:
        if not settings.optional:
            await store.close()
            raise
        logger.warning(f"{exc}; records.optional: serving, records wait until it answers")
        return RecordWriter(store, settings, ready=False)
    logger.info(f"records: writing to {store.shown_url}")
    return RecordWriter(store, settings)


@asynccontextmanager
async def attached(writer: RecordWriter | None, calls: CallEvents) -> AsyncIterator[None]:
    """While inside, ``writer`` (if any) records every call ``calls`` reports."""
    if writer is None:
        yield
        return
    calls.add_listener(writer)
    writer.start()
    try:
        yield
    finally:
        calls.remove_listener(writer)
        await writer.close()
