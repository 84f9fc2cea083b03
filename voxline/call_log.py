"""Which call a log line belongs to: ``[call <id> trace <id>]`` in the line's header.

A call's task runs inside ``logger.contextualize(call_id=...)`` (see
:mod:`voxline.bot.call_events`), so every line it logs, and every line of the
tasks it starts, carries the call's id. The trace id is looked up when the line
is written, because tracing assigns it after the call started. This module
imports no pipecat: the CLI sets up logging before pipecat is imported.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

LOG_FORMAT_HEAD = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{name}</cyan>:<cyan>{function}</cyan>:<cyan>{line}</cyan>"
)


class _HasTraceId(Protocol):
    trace_id: str | None


_live: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register(call_id: str, info: _HasTraceId) -> None:
    """Remember a live call, so its lines can show its trace id once it has one."""
    _live[call_id] = info


def unregister(call_id: str) -> None:
    """Forget a call that ended."""
    _live.pop(call_id, None)


def tag(record: dict) -> str:
    """`` [call <id>]`` (with `` trace <id>`` when the call is traced) or ""."""
    extra = record.get("extra") or {}
    call_id = extra.get("call_id")
    if not call_id:
        return ""
    trace_id = extra.get("trace_id")
    if trace_id is None and (info := _live.get(call_id)) is not None:
        trace_id = info.trace_id
    return f" [call {call_id}{f' trace {trace_id}' if trace_id else ''}]"


def log_format(record: dict) -> str:
    """loguru's default line, with the call's tag after the source location."""
    return (
        LOG_FORMAT_HEAD
        + tag(record).replace("{", "{{").replace("}", "}}")
        + (" - <level>{message}</level>\n{exception}")
    )
