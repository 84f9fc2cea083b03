"""The ``records:`` section of ``voxline.yaml`` and the ``records_url`` that names the database.

Imports only pydantic and :mod:`voxline.yamlfile`: :mod:`voxline.config` reads these without
loading SQLAlchemy.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field

from voxline.yamlfile import StrictModel

SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
"""Accepted URL schemes and the async driver each one is served by."""


class RecordsConfig(StrictModel):
    """What call records keep, for how long, and what happens when the database is away."""

    enabled: bool = Field(default=True, description="Record calls at all.")
    retention_days: float | None = Field(
        default=90,
        gt=0,
        description="Calls that started longer ago are deleted (at start, then hourly); "
        "null keeps them forever.",
    )
    keep_tool_arguments: bool = Field(
        default=True,
        description="Store tool calls' arguments and results; false keeps only the tool's "
        "name, duration and whether it failed.",
    )
    keep_caller_numbers: bool = Field(
        default=True,
        description="Store the caller's and the called phone numbers; false stores none.",
    )
    optional: bool = Field(
        default=False,
        description="Serve even when the database cannot be reached at start (records wait "
        "in memory, bounded, until it can); false: `serve` stops with exit code 2.",
    )
    max_waiting: int = Field(
        default=10_000,
        ge=10,
        le=1_000_000,
        description="Records held in memory while the database is slow or away; more are "
        "dropped and counted.",
    )


def default_records_path() -> Path:
    """Where records go without ``records_url``: ``$XDG_DATA_HOME/voxline/records.sqlite3``.

    ``XDG_DATA_HOME`` defaults to ``~/.local/share``; ``serve`` and ``calls`` use the
    same file, so ``voxline calls list`` shows what ``voxline serve`` recorded.
    """
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "voxline" / "records.sqlite3"


def check_records_url(url: str, base_dir: Path) -> str:
    """``url`` validated, a relative SQLite path made relative to the config's folder.

    Raises:
        ValueError: a scheme voxline has no driver for, or a URL without a database.
    """
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(
            "records_url must start with sqlite:/// (a file) or postgresql:// (a server), "
            f"got {_shown(url)}"
        )
    rest = url.split("://", 1)[1]
    if SCHEMES[scheme].startswith("sqlite"):
        if not rest.startswith("/") or rest == "/":
            raise ValueError("records_url: a SQLite URL is sqlite:///path/to/records.sqlite3")
        path = Path(rest[1:]).expanduser()
        if rest[1:] == ":memory:":
            raise ValueError("records_url: an in-memory SQLite database keeps no records")
        if not path.is_absolute():
            path = base_dir / path
        return f"sqlite:///{path}"
    parts = urlsplit(url)
    if not parts.hostname and "host=" not in (parts.query or ""):
        raise ValueError("records_url: a PostgreSQL URL names its host: postgresql://host/db")
    return url


def driver_url(url: str) -> str:
    """``url`` with the scheme of the async driver that serves it."""
    scheme, rest = url.split("://", 1)
    return f"{SCHEMES[scheme.lower()]}://{rest}"


def shown_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _shown(url: str) -> str:
    shown = shown_url(url)
    return repr(shown[:80])
