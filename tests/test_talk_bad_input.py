"""``voxline talk`` refuses bad input with exit code 2 and one clear line, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.conftest import BANK_PERSONA, VOXLINE


def run_talk(
    caller: Path, output: str, env: dict[str, str], persona: Path = BANK_PERSONA
) -> subprocess.CompletedProcess[str]:
    command = [
        VOXLINE,
        "talk",
        "--persona",
        str(persona),
        "--input",
        str(caller),
        "--output",
        output,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def assert_refused(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("voxline: error:"), lines[0]
    assert expected in lines[0], lines[0]
    assert result.stdout == ""


@pytest.fixture
def output(tmp_path: Path) -> str:
    return str(tmp_path / "reply.wav")


def test_missing_wav(tmp_path, output, voxline_env):
    result = run_talk(tmp_path / "nope.wav", output, voxline_env)
    assert_refused(result, "input audio not found")


def test_empty_wav(tmp_path, output, voxline_env):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = run_talk(empty, output, voxline_env)
    assert_refused(result, "is empty")


def test_wav_with_no_samples(tmp_path, output, voxline_env):
    hollow = tmp_path / "hollow.wav"
    soundfile.write(str(hollow), np.zeros(0, dtype=np.int16), 16000)
    result = run_talk(hollow, output, voxline_env)
    assert_refused(result, "holds no samples")


def test_corrupt_wav(tmp_path, output, voxline_env):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(range(256)) * 4)
    result = run_talk(corrupt, output, voxline_env)
    assert_refused(result, "not a readable WAV file")


def test_silent_wav(tmp_path, output, voxline_env):
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(16000 * 2, dtype=np.int16), 16000)
    result = run_talk(silent, output, voxline_env)
    assert_refused(result, "is silent")


def test_invalid_persona(tmp_path, output, voxline_env):
    persona = tmp_path / "broken.yaml"
    persona.write_text("name: broken\nprompt: hi\nllm:\n  temperature: hot\n")
    caller = tmp_path / "caller.wav"
    soundfile.write(str(caller), (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    result = run_talk(caller, output, voxline_env, persona=persona)
    assert_refused(result, "llm.temperature")
    assert str(persona) in result.stderr


def test_missing_output_directory(tmp_path, voxline_env):
    caller = tmp_path / "caller.wav"
    soundfile.write(str(caller), (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    result = run_talk(caller, str(tmp_path / "no" / "r.wav"), voxline_env)
    assert_refused(result, "output directory does not exist")


def test_every_problem_of_a_persona_is_one_error_line(tmp_path, output, voxline_env):
    persona = tmp_path / "two_mistakes.yaml"
    persona.write_text("name: t\nprompt: hi\nllm: {temperature: hot, max_tokens: lots}\n")
    caller = tmp_path / "caller.wav"
    soundfile.write(str(caller), (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    result = run_talk(caller, output, voxline_env, persona=persona)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[3] for line in lines] == ["llm.temperature", "llm.max_tokens"]
    assert all(line.startswith(f"voxline: error: {persona}: ") for line in lines), lines


def test_an_output_directory_is_refused_before_the_call(tmp_path, voxline_env):
    caller = tmp_path / "caller.wav"
    soundfile.write(str(caller), (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    result = run_talk(caller, str(tmp_path), voxline_env)
    assert_refused(result, f"--output {tmp_path} is a directory")


@pytest.mark.slow
def test_the_reply_is_a_wav_file_whatever_the_output_is_called(tmp_path, voxline_env):
    output = tmp_path / "reply.audio"
    command = [VOXLINE, "talk", "--persona", str(BANK_PERSONA), "--say", "Hello, who are you?"]
    command += ["--output", str(output), "--timeout", "60"]
    result = subprocess.run(command, capture_output=True, text=True, env=voxline_env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    info = soundfile.info(str(output))
    assert (info.format, info.subtype) == ("WAV", "PCM_16") and info.frames > 0


def test_dial_refuses_an_output_directory_before_calling(tmp_path, voxline_env):
    env = {**voxline_env, "TWILIO_AUTH_TOKEN": "test-token"}
    command = [VOXLINE, "dial", "http://127.0.0.1:9", "--say", "Hi.", "--output", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert_refused(result, f"--output {tmp_path} is a directory")
