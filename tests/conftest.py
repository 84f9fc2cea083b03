"""Shared fixtures: the repository root, the voxline command, caller audio made with Piper."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VOXLINE = str(Path(sys.executable).parent / "voxline")
BANK_PERSONA = ROOT / "personas" / "bank_support.yaml"


@pytest.fixture
def voxline_env() -> dict[str, str]:
    """Environment for a ``voxline`` subprocess: offline, logging at INFO."""
    env = dict(os.environ)
    env.update({"VOXLINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "VOXLINE_LOG_LEVEL": "INFO"})
    return env


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the bad-input corpus table (tests/corpus) when any test recorded inputs."""
    from tests.corpus import RESULTS, report_path, table, write_json

    if not RESULTS:
        return
    terminalreporter.write_sep("=", "bad-input corpus")
    terminalreporter.write_line(table())
    if path := report_path():
        write_json(path)
