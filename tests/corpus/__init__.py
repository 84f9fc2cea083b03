"""The bad-input corpus: hostile and malformed inputs, and the table of how the server took them.

Test modules feed inputs (files in this folder, or made by the test) to real
servers and record each outcome here; ``tests/conftest.py`` prints the table at
the end of the pytest run, so CI output shows it::

    from tests.corpus import record

    record("twilio stream", "bad base64", refused=True, detail="dropped, call went on")
    record("persona yaml", "billion laughs", refused=False, crashed=True, detail="Traceback")

A row of the table is a ``category``; its columns count the inputs tried, those
refused cleanly (an HTTP 4xx with a reason, a socket closed with a code and a
reason, a message dropped with one log line while the call went on, exit 2 with
one line naming the file and the field) and the crashes (a traceback, a 5xx, a
dead or hung server). A test should still assert on each input itself; the
table is the summary, not the check.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Outcome:
    """What one corpus input did.

    Attributes:
        category: the table row, e.g. ``twilio stream before start``.
        name: the input, e.g. ``bad base64``.
        refused: whether it was refused cleanly.
        crashed: whether it crashed anything (a traceback, a 5xx, a dead server).
        detail: what was seen (a status and reason, a close code, a log line).
    """

    category: str
    name: str
    refused: bool
    crashed: bool = False
    detail: str = ""


def _shared_results() -> list[Outcome]:
    # pytest may import this package as `tests.corpus` and as `corpus` (tests/ is on
    # sys.path too): both names must share one list.
    for alias in ("tests.corpus", "corpus"):
        module = sys.modules.get(alias)
        if module is not None and isinstance(getattr(module, "RESULTS", None), list):
            return module.RESULTS
    return []


RESULTS: list[Outcome] = _shared_results()


def record(
    category: str, name: str, *, refused: bool, crashed: bool = False, detail: str = ""
) -> Outcome:
    """Record one input's outcome for the table; returns it."""
    outcome = Outcome(category, name, refused, crashed, detail)
    RESULTS.append(outcome)
    return outcome


def totals(results: list[Outcome] | None = None) -> dict[str, tuple[int, int, int]]:
    """Per category: (inputs tried, refused cleanly, crashes), in first-recorded order."""
    rows: dict[str, list[int]] = {}
    for outcome in RESULTS if results is None else results:
        row = rows.setdefault(outcome.category, [0, 0, 0])
        row[0] += 1
        row[1] += outcome.refused and not outcome.crashed
        row[2] += outcome.crashed
    return {category: (row[0], row[1], row[2]) for category, row in rows.items()}


def table(results: list[Outcome] | None = None) -> str:
    """The corpus table: one row per category and a total, then every input not refused."""
    results = RESULTS if results is None else results
    rows = totals(results)
    width = max([len("category"), *(len(category) for category in rows)])
    lines = [f"{'category':<{width}}  {'tried':>5}  {'refused cleanly':>15}  {'crashes':>7}"]
    for category, (tried, refused, crashes) in rows.items():
        lines.append(f"{category:<{width}}  {tried:>5}  {refused:>15}  {crashes:>7}")
    tried, refused, crashes = (sum(row[i] for row in rows.values()) for i in range(3))
    lines.append(f"{'total':<{width}}  {tried:>5}  {refused:>15}  {crashes:>7}")
    odd = [o for o in results if o.crashed or not o.refused]
    for outcome in odd:
        kind = "CRASH" if outcome.crashed else "not refused"
        lines.append(f"  {kind}: {outcome.category} / {outcome.name}: {outcome.detail}")
    return "\n".join(lines)


def write_json(path: Path | str) -> None:
    """Write every outcome as JSON (``VOXLINE_CORPUS_REPORT`` names the file in CI)."""
    Path(path).write_text(json.dumps([asdict(o) for o in RESULTS], indent=1) + "\n")


def report_path() -> str | None:
    """Where to write the JSON report, if anywhere."""
    return os.environ.get("VOXLINE_CORPUS_REPORT") or None
