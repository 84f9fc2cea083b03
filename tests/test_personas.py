"""Persona files: a valid one loads; every malformed one names the file, the field and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from voxline.personas import Persona, load_persona
from voxline.yamlfile import ConfigError

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
name: test_bot
greeting: Hello there.
prompt: You are a helpful phone assistant.
llm:
  model: smollm2
  max_tokens: 40
"""


def write(tmp_path: Path, text: str, name: str = "persona.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_persona(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_shipped_bank_support_persona_loads():
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    assert persona.name == "bank_support"
    assert persona.greeting
    # "a few hundred tokens of instructions": roughly 4 characters a token
    assert 800 < len(persona.system_prompt) < 4000
    assert persona.tts.engine == "piper"


def test_valid_persona_fills_defaults(tmp_path):
    persona = load_persona(write(tmp_path, VALID))
    assert isinstance(persona, Persona)
    assert persona.system_prompt == "You are a helpful phone assistant."
    assert persona.llm.max_tokens == 40
    assert persona.stt.model == "tiny.en"
    assert persona.turn.stop_secs >= persona.turn.early_secs


def test_the_lines_that_leave_the_call_cannot_be_talked_over_by_default(tmp_path):
    # A goodbye cut by the caller's own "bye" would end the call in silence.
    assert load_persona(write(tmp_path, VALID)).turn.uninterruptible == ["goodbye", "transfer"]
    open_lines = load_persona(write(tmp_path, VALID + "turn:\n  uninterruptible: []\n"))
    assert open_lines.turn.uninterruptible == []


def test_prompt_file_is_read_relative_to_the_persona(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "bot.md").write_text("Speak briefly.\n")
    persona = load_persona(write(tmp_path, "name: filebot\nprompt_file: prompts/bot.md\n"))
    assert persona.system_prompt == "Speak briefly."


def test_missing_required_field(tmp_path):
    message = load_error(write(tmp_path, "prompt: hi\n"))
    assert "name: required field is missing" in message


def test_wrong_type_names_field_and_value(tmp_path):
    message = load_error(write(tmp_path, VALID.replace("max_tokens: 40", "max_tokens: lots")))
    assert "llm.max_tokens" in message
    assert "'lots'" in message
    assert "integer" in message


def test_out_of_range_value(tmp_path):
    message = load_error(write(tmp_path, VALID + "turn:\n  stop_secs: -1\n"))
    assert "turn.stop_secs" in message
    assert "greater than 0" in message


def test_unknown_key_lists_allowed_fields(tmp_path):
    message = load_error(write(tmp_path, VALID + "turn:\n  stop_sec: 0.5\n"))
    assert "turn.stop_sec: unknown field" in message
    assert "stop_secs" in message  # the hint lists the field that was meant


def test_unknown_top_level_key(tmp_path):
    message = load_error(write(tmp_path, VALID + "gretting: hi\n"))
    assert "gretting: unknown field" in message
    assert "greeting" in message


def test_yaml_syntax_error_names_line(tmp_path):
    message = load_error(write(tmp_path, "name: bot\nprompt: [unclosed\n"))
    assert "YAML syntax error" in message
    assert "line " in message


def test_missing_prompt_file(tmp_path):
    message = load_error(write(tmp_path, "name: bot\nprompt_file: nowhere.md\n"))
    assert "prompt_file" in message
    assert "prompt file not found" in message
    assert "nowhere.md" in message


def test_prompt_and_prompt_file_are_exclusive(tmp_path):
    (tmp_path / "p.md").write_text("x")
    message = load_error(write(tmp_path, "name: bot\nprompt: a\nprompt_file: p.md\n"))
    assert "exactly one of `prompt`" in message


def test_empty_file(tmp_path):
    message = load_error(write(tmp_path, ""))
    assert "empty" in message


def test_not_a_mapping(tmp_path):
    message = load_error(write(tmp_path, "- just\n- a list\n"))
    assert "mapping" in message


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "absent.yaml")
    assert "file not found" in message


def test_early_secs_must_not_exceed_stop_secs(tmp_path):
    message = load_error(write(tmp_path, VALID + "turn:\n  stop_secs: 0.3\n  early_secs: 0.5\n"))
    assert "early_secs" in message


def test_builtin_tools_are_accepted(tmp_path):
    persona = load_persona(write(tmp_path, VALID + "tools: [end_call, transfer_call]\n"))
    assert persona.tools == ["end_call", "transfer_call"]


def test_unknown_tool_names_the_builtins(tmp_path):
    message = load_error(write(tmp_path, VALID + "tools: [end_call, teleport]\n"))
    assert "tools: " in message and "teleport" in message
    assert "end_call, transfer_call, send_dtmf" in message


def test_forced_tool_choice_must_be_a_listed_tool(tmp_path):
    text = VALID.replace("max_tokens: 40", "max_tokens: 40\n  tool_choice: end_call")
    message = load_error(write(tmp_path, text))
    assert "llm.tool_choice 'end_call' is not one of the persona's tools" in message
    assert load_persona(write(tmp_path, text + "tools: [end_call]\n")).llm.tool_choice == "end_call"


def test_tts_engines_and_their_voices_are_checked_at_load(tmp_path):
    message = load_error(write(tmp_path, VALID + "tts:\n  engine: espeak\n"))
    assert "tts.engine" in message and "'piper' or 'orpheus'" in message
    message = load_error(write(tmp_path, VALID + "tts:\n  engine: orpheus\n  voice: tara\n"))
    assert "tts: " in message and "engine orpheus needs `base_url`" in message
    orpheus = "tts:\n  engine: orpheus\n  base_url: http://127.0.0.1:8001\n  voice: bob\n"
    message = load_error(write(tmp_path, VALID + orpheus))
    assert "unknown Orpheus voice 'bob': choose one of tara, leah" in message
    persona = load_persona(write(tmp_path, VALID + orpheus.replace("bob", "leo")))
    assert persona.tts.voice == "leo" and persona.tts.temperature == 0.6
    assert load_persona(write(tmp_path, VALID)).tts.voice == "en_US-joe-medium"
