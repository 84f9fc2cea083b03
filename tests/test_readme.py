"""The README's commands are the ones CI and users run."""

from __future__ import annotations

from tests.conftest import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci_lines if line and not line.startswith(("#", "set ", "cd "))]
    assert len(commands) == 1, commands
    assert commands[0] in (ROOT / "README.md").read_text()


def test_readme_run_command_uses_shipped_files():
    readme = (ROOT / "README.md").read_text()
    run_line = next(line for line in readme.splitlines() if "voxline serve --persona" in line)
    assert "bash scripts/install.sh &&" in run_line
    assert "http://127.0.0.1:8080/" in readme  # the demo page the command serves
    assert (ROOT / "personas" / "bank_support.yaml").is_file()
    assert (ROOT / "scripts" / "install.sh").is_file()
