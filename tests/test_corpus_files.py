"""Every bad persona, tool spec, server config and caller clip in the corpus is refused cleanly.

`voxline check`, `voxline serve --config` and `voxline talk --input` each read one
corpus input in a fresh process: each must exit 2 at once with one line that names
the file and says what is wrong, never a traceback, a hang or another exit code.
Every outcome is recorded in the corpus table printed at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus import record
from tests.corpus_files import (
    CRASHED,
    HUNG,
    REFUSED,
    Case,
    generated_cases,
    run_case,
    shipped_cases,
)

# Generated inputs are made in each test's temporary directory; their names are stable.
_PLACEHOLDER = Path("/generated")
_CASES = shipped_cases() + generated_cases(_PLACEHOLDER)


def _materialize(case: Case, scratch: Path) -> Case:
    if not case.path.is_relative_to(_PLACEHOLDER):
        return case
    path = scratch / case.path.relative_to(_PLACEHOLDER)
    return Case(case.name, case.kind, case.command, path, case.expect, case.make, case.names)


@pytest.mark.parametrize("case", _CASES, ids=[case.name for case in _CASES])
def test_corpus_input_is_refused_cleanly(case: Case, tmp_path: Path, voxline_env):
    result = run_case(_materialize(case, tmp_path), tmp_path, voxline_env)
    record(
        case.kind,
        case.name.split("/", 1)[1],
        refused=result.outcome == REFUSED,
        crashed=result.outcome in (CRASHED, HUNG),
        detail=result.why or result.stderr.strip()[:160],
    )
    assert result.outcome == REFUSED, f"{result.outcome}: {result.why}\n{result.stderr[-3000:]}"
