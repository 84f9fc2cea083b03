"""The libraries' Python warnings stay out of the user's terminal unless ``-v``.

pipecat raises its deprecations under an ``"always"`` filter of its own, which no
``-W ignore`` would hide; ``voxline`` routes every warning to its log at DEBUG.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import BANK_PERSONA, VOXLINE
from tests.speech import synthesize_wav

WARNING_LINE = re.compile(r"\b[A-Z]\w*Warning\b")  # DeprecationWarning, UserWarning, ...

# A real pipecat deprecation (an LLMContext that starts with a system message, handed to
# its OpenAI adapter), raised after the CLI has configured logging as ``voxline`` does.
RAISE_PIPECAT_DEPRECATION = """
import asyncio, sys
from voxline.bot.cli import _configure_logging
_configure_logging(verbose=sys.argv[1] == "-v")
from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter
from pipecat.processors.aggregators.llm_context import LLMContext
context = LLMContext(messages=[{"role": "system", "content": "x"}])
asyncio.run(OpenAILLMAdapter().get_llm_invocation_params(context, convert_developer_to_user=False))
print("done")
"""


def default_env() -> dict[str, str]:
    """Offline, with the default log level and no warning options of the user's."""
    env = {k: v for k, v in os.environ.items() if k not in ("VOXLINE_LOG_LEVEL", "PYTHONWARNINGS")}
    env.update({"VOXLINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    return env


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_show_only_with_verbose(verbose):
    env = default_env()
    result = subprocess.run(
        [sys.executable, "-c", RAISE_PIPECAT_DEPRECATION, "-v" if verbose else "-"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr
    shown = [line for line in result.stderr.splitlines() if WARNING_LINE.search(line)]
    if verbose:
        assert any("DeprecationWarning" in line and "LLMContext" in line for line in shown), (
            result.stderr
        )
    else:
        assert not shown, result.stderr


@pytest.mark.slow
def test_talk_prints_no_library_warnings(tmp_path):
    caller = synthesize_wav("Hi, when are you open?", tmp_path / "caller.wav")
    env = default_env()
    result = subprocess.run(
        [VOXLINE, "talk", "--persona", str(BANK_PERSONA), "--input", str(caller),
         "--output", str(tmp_path / "reply.wav")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "turn 1" in result.stdout, result.stdout
    shown = [line for line in result.stderr.splitlines() if WARNING_LINE.search(line)]
    assert not shown, result.stderr
