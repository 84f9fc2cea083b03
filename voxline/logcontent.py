"""What voxline's log may say about a call.

By default the log carries no caller content: no transcripts, no replies, no
tool arguments or results, no LLM contexts, no full phone numbers. Lines keep
what operators need (ids, timings, counts, tool names, exception types) and say
how much content there was instead of the content. ``log_content: true`` in
``voxline.yaml`` (or ``VOXLINE_LOG_CONTENT=1``, or ``voxline -v talk``) puts the
content back, for development.

The switch is process-wide: one process serves one configuration. Secrets (the
values of ``${ENV}`` references in tool specs) are never logged, whatever it says.
"""

from __future__ import annotations

import json
import os

ENV_VARIABLE = "VOXLINE_LOG_CONTENT"
"""Set to 1 (or true) to log caller content whatever the configuration says."""

_enabled = False


def _from_environment() -> bool:
    return os.environ.get(ENV_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def configure(enabled: bool) -> None:
    """Log caller content from now on when ``enabled`` (or ``$VOXLINE_LOG_CONTENT`` says so)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether lines may carry caller content now."""
    return _enabled or _from_environment()


def text(value: str) -> str:
    """``value`` quoted when content is logged, else only its length in words."""
    if enabled():
        return repr(value)
    return f"<{len(value.split())} words>"


def number(value: str) -> str:
    """A phone number: whole when content is logged, else ``+1555***1234``."""
    if enabled() or not value:
        return value
    if len(value) >= 10:
        return f"{value[:5]}***{value[-4:]}"
    return f"***{value[-2:]}" if len(value) > 4 else "***"


def messages(items: list[dict]) -> str:
    """An LLM context as JSON: the messages themselves, or only their count by role."""
    if enabled():
        return json.dumps(items)
    roles: dict[str, int] = {}
    tool_calls = 0
    for message in items:
        role = str(message.get("role", "?"))
        roles[role] = roles.get(role, 0) + 1
        tool_calls += len(message.get("tool_calls") or [])
    return json.dumps({"messages": len(items), "roles": roles, "tool_calls": tool_calls})
