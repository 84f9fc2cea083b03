"""The records' tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Every table is prefixed ``voxline_`` so the records can share a database. Rows are
written with upserts keyed on the call id, so writing the same record twice (a
retry after a connection dropped during a commit) leaves one row.

``voxline_schema`` holds the schema's version; :func:`migrate` creates what is
missing and brings an older schema up to :data:`SCHEMA_VERSION` on start.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

SCHEMA_VERSION = 1
# Any fixed 64-bit key: the one lock every voxline takes to create or migrate its tables.
MIGRATION_LOCK_KEY = 0x766F786C696E65

metadata = MetaData()

calls = Table(
    "voxline_calls",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("call_sid", String(64), nullable=True),
    Column("persona", String(200), nullable=False),
    Column("transport", String(16), nullable=False),
    Column("caller", String(200), nullable=True),
    Column("called", String(64), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("end_reason", Text, nullable=True),
    Column("trace_id", String(32), nullable=True),
    Index("ix_voxline_calls_started_at", "started_at"),
    Index("ix_voxline_calls_persona_started_at", "persona", "started_at"),
    Index("ix_voxline_calls_call_sid", "call_sid"),
)

turns = Table(
    "voxline_turns",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("turn", Integer, primary_key=True),
    Column("finished", Boolean, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("caller_text", Text, nullable=False),
    Column("bot_text", Text, nullable=False),
    Column("interrupted", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Column("latency_ms", JSON, nullable=False),
    Column("timeline_ms", JSON, nullable=False),
    Column("turn_taking", JSON, nullable=False),
    Column("llm_usage", JSON, nullable=False),
)

tool_calls = Table(
    "voxline_tool_calls",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("turn", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("arguments", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("failed", Boolean, nullable=False),
    Column("started_ms", Float, nullable=True),
    Column("duration_ms", Float, nullable=True),
)

heard = Table(
    "voxline_heard",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("turn", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("interrupted", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
"""What the caller heard of the bot: one row per reply (turn 0 is the greeting)."""

schema = Table(
    "voxline_schema",
    metadata,
    Column("version", Integer, primary_key=True),
)

CALL_TABLES = (calls, turns, tool_calls, heard)


async def migrate(connection: AsyncConnection) -> int:
    """Create missing tables and record the schema version; returns the version found.

    Raises:
        RuntimeError: the database holds a newer schema than this voxline knows.
    """
    if connection.dialect.name == "postgresql":
        # Processes starting together wait for each other here, so only one creates.
        await connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    await connection.run_sync(metadata.create_all, checkfirst=True)
    found = (await connection.execute(select(schema.c.version))).scalars().all()
    version = max(found, default=0)
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the records database has schema version {version}; this voxline knows "
            f"{SCHEMA_VERSION}: upgrade voxline"
        )
    # Later versions add their steps here (ALTER TABLE ...), each guarded by `version`.
    if version < SCHEMA_VERSION:
        await connection.execute(schema.delete())
        await connection.execute(schema.insert().values(version=SCHEMA_VERSION))
    return version
