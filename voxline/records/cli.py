"""``voxline calls list`` and ``voxline calls show``: read the call records.

Both read the database ``serve`` writes to: ``records_url`` from ``--config``, or the
default SQLite file when there is none (the same default as ``serve``'s).
Exit codes: 0 done, 1 the call is not there or the database cannot be read,
2 bad input (a malformed call id, ``--since`` or config).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from voxline.records.models import CallRecord, CallSummary, TurnRecord

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class BadInputError(ValueError):
    """A command-line value that cannot be used; the message says what is expected."""


def add_parser(commands) -> None:
    """Add ``calls list`` and ``calls show`` to the ``voxline`` command."""
    calls = commands.add_parser("calls", help="list recorded calls, or show one")
    sub = calls.add_subparsers(dest="calls_command", required=True)
    listing = sub.add_parser("list", help="recent calls, newest first")
    listing.add_argument("--persona", help="only this persona's calls")
    listing.add_argument(
        "--since",
        help="only calls since then: 2026-12-03, 2026-12-03T14:00 (UTC unless an offset "
        "is given), or a time ago: 30m, 2h, 7d",
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    show = sub.add_parser("show", help="one call: transcript, tool calls, each turn's latency")
    show.add_argument("id", help="the record's id (or its first 6+ characters), or a CallSid")
    for parser in (listing, show):
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--config", type=Path, help="voxline.yaml (its records_url)")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date or time (UTC unless it says), or a time ago (``2h``).

    Raises:
        BadInputError: neither.
    """
    now = now or datetime.now(UTC)
    text = value.strip()
    if match := RELATIVE.fullmatch(text):
        amount, unit = float(match.group(1)), match.group(2)
        return now - timedelta(**{UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInputError(
            f"--since {value!r}: give a date or time (2026-12-03, 2026-12-03T14:00) "
            "or a time ago (30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    """Run ``calls list`` or ``calls show``; returns the exit code."""
    from voxline.config import load_config
    from voxline.yamlfile import ConfigError

    try:
        config = load_config(args.config) if args.config else None
        since = parse_since(args.since) if getattr(args, "since", None) else None
        if args.calls_command == "show" and not CALL_ID.fullmatch(args.id.strip()):
            raise BadInputError(
                f"{_shown(args.id)} is not a call id: give a record id (32 hex digits, or "
                "their first 6 or more) or a Twilio CallSid (CA...)"
            )
        if args.calls_command == "list" and not 1 <= args.limit <= 1000:
            raise BadInputError("--limit: give a number from 1 to 1000")
    except (ConfigError, BadInputError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    url = config.records_url if config is not None else None
    try:
        return asyncio.run(_run(args, url, since))
    except BrokenPipeError:  # the reader (| head) left: nothing more to say
        sys.stderr.close()
        return EXIT_OK


async def _run(args: argparse.Namespace, url: str | None, since: datetime | None) -> int:
    from voxline.records.store import RecordStore, RecordsUnavailableError

    store = RecordStore(url)
    try:
        try:
            await store.open(create=not store.is_sqlite or _sqlite_exists(store.url))
        except RecordsUnavailableError as exc:
            if store.is_sqlite and not _sqlite_exists(store.url):
                if args.calls_command == "list":
                    print("[]" if args.json else f"no calls recorded yet ({store.shown_url})")
                    return EXIT_OK
                return _fail(f"no call {_shown(args.id)}: no calls recorded yet", EXIT_FAILURE)
            return _fail(str(exc), EXIT_FAILURE)
        if args.calls_command == "list":
            found = await store.recent_calls(persona=args.persona, since=since, limit=args.limit)
            _print_list(found, args.json, store.shown_url)
            return EXIT_OK
        record = await store.call(args.id.strip())
        if record is None:
            return _fail(
                f"no call {_shown(args.id)} in {store.shown_url} (an id prefix must match "
                "one call only)",
                EXIT_FAILURE,
            )
        if args.json:
            print(record.model_dump_json(indent=2))
        else:
            print_call(record)
        return EXIT_OK
    finally:
        await store.close()


def _sqlite_exists(url: str) -> bool:
    return Path(url.removeprefix("sqlite:///")).is_file()


def _fail(message: str, code: int) -> int:
    print(f"voxline: error: {message}", file=sys.stderr)
    return code


def _shown(value: str) -> str:
    return repr(value[:80] + ("..." if len(value) > 80 else ""))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _line(call: CallSummary) -> str:
    if call.transport == "twilio":
        return f"phone {call.caller or '?'} -> {call.called or '?'}"
    if call.transport == "webrtc":
        return f"widget {call.caller or '?'}"
    return call.transport


def _print_list(found: list[CallSummary], as_json: bool, where: str) -> None:
    if as_json:
        print(json.dumps([call.model_dump(mode="json") for call in found], indent=2))
        return
    if not found:
        print(f"no calls match ({where})")
        return
    print(f"{'STARTED':21} {'SECS':>6} {'PERSONA':16} {'TURNS':>5}  {'ID':12}  LINE; END")
    for call in found:
        secs = "-" if call.duration_secs is None else f"{call.duration_secs:.0f}"
        ending = call.end_reason or "in progress (or the server stopped)"
        print(
            f"{_when(call.started_at):21} {secs:>6} {call.persona[:16]:16} {call.turns:>5}  "
            f"{call.id[:12]:12}  {_line(call)}; {ending}"
        )


def print_call(call: CallRecord) -> None:
    """The call as text: its line, the transcript with each turn's latency and tools."""
    print(f"call {call.id}  persona {call.persona}  {_line(call)}")
    if call.call_sid:
        print(f"  CallSid {call.call_sid}")
    if call.trace_id:
        print(f"  trace {call.trace_id}")
    print(f"  started {_when(call.started_at)}  ended {_when(call.ended_at)}", end="")
    print(f"  ({call.end_reason or 'no end recorded: in progress, or the server stopped'})")
    if call.greeting_heard:
        print(f"\nbot (greeting): {call.greeting_heard}")
    for turn in call.turn_records:
        _print_turn(turn)
    if not call.turn_records:
        print("\nno caller turn was recorded")


def _print_turn(turn: TurnRecord) -> None:
    flags = [] if turn.finished else ["unfinished: the call ended during it"]
    if turn.interrupted:
        flags.append("interrupted")
    print(f"\nturn {turn.turn}" + (f"  [{'; '.join(flags)}]" if flags else ""))
    print(f"  caller: {turn.caller_text}")
    heard = turn.bot_heard
    if heard is not None:
        print(f"  bot:    {heard}")
        if turn.bot_text and _words(heard) != _words(turn.bot_text):
            print(f"  (LLM wrote: {turn.bot_text})")
    elif turn.bot_text:
        print(f"  bot:    (not heard) LLM wrote: {turn.bot_text}")
    if turn.error:
        print(f"  error:  {turn.error}")
    for tool in turn.tools:
        took = "" if tool.duration_ms is None else f" ({tool.duration_ms:.0f} ms)"
        failed = " [failed]" if tool.failed else ""
        arguments = "" if tool.arguments is None else json.dumps(tool.arguments)
        result = "" if tool.result is None else f" -> {json.dumps(tool.result)}"
        print(f"  tool:   {tool.name}({arguments}){result}{took}{failed}")
    latency = "  ".join(
        f"{name}={'-' if value is None else f'{value:.0f}ms'}"
        for name, value in turn.latency_ms.items()
    )
    print(f"  latency: {latency}")
    reason = turn.turn_taking.get("commit_reason")
    if reason:
        print(f"  turn:   ended by {reason}")


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", "", text.replace(" [interrupted]", "").lower()).split()
