"""``voxline serve`` on its default LLM, vLLM: start-up, a phone call, a browser call, shutdown.

One ``voxline serve`` with the default engine settings serves the tests that need vLLM (it
takes 40-60 s to start here: the packaged GGUF is converted into a fresh checkpoint folder,
then vLLM loads it). It is called like Twilio would (the Twilio-protocol caller) and from a
real headless Chromium, then stopped with SIGTERM, after which no process it started may be
left. Without vLLM, ``serve`` refuses in one line, or runs llama.cpp when the config allows it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import BANK_PERSONA, VOXLINE
from servers import ServerProcess, start_voxline
from speech import caller_voice
from test_webrtc_browser import QUESTION as BROWSER_QUESTION
from test_webrtc_browser import call_from_browser, check_conversation, microphone

from voxline.config import ServerConfig, load_config
from voxline.engines.llm import free_port
from voxline.engines.vllm import prepare_vllm_model
from voxline.models import resolve_llm_gguf
from voxline.transports.caller_frames import RATE
from voxline.transports.twilio_caller import TwilioCaller
from voxline.yamlfile import ConfigError

AUTH_TOKEN = "test-auth-token-0123456789"
PHONE_QUESTION = "Hi, what is my account balance?"


# --- processes, read from /proc --------------------------------------------------------------


def process_table() -> dict[int, tuple[str, str, int, int]]:
    """Every live process: pid -> (name, state, parent pid, process group)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, parent, group = stat[stat.rindex(")") + 2 :].split()[:3]
        table[int(entry.name)] = (name, state, int(parent), int(group))
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (children, their children, ...), by pid -> name."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (name, _state, ppid, _group) in table.items():
            if ppid == parent and child not in found:
                found[child] = name
                frontier.append(child)
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its entry is left)."""
    entry = process_table().get(pid)
    return entry is not None and entry[1] != "Z"


# --- the shared vLLM-backed server -------------------------------------------------------------


MAX_CALLS = 6  # not the LLM client's cap for other servers (4)


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory) -> Iterator[dict]:
    """``voxline serve`` with the default engines (vLLM), its checkpoint folder fresh."""
    tmp = tmp_path_factory.mktemp("serve-vllm")
    port = free_port()
    checkpoints = tmp / "checkpoints"
    config = tmp / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: {BANK_PERSONA}
            max_calls: {MAX_CALLS}
            engines:
              vllm: {{checkpoint_dir: {checkpoints}}}  # empty: this start converts the model
            """
        )
    )
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "VOXLINE_LOG_LEVEL": "INFO",
    }
    started = time.monotonic()
    server = start_voxline(config, env, port)
    print(f"\nvoxline serve with vLLM ready in {time.monotonic() - started:.1f} s")
    state = {"server": server, "url": f"http://127.0.0.1:{port}", "tmp": tmp}
    state["checkpoints"] = checkpoints
    yield state
    server.stop()


def progress_lines(server: ServerProcess) -> list[str]:
    """The start-up lines ``serve`` printed on stderr, up to its ready line."""
    lines = []
    for line in server.lines:
        if line.startswith(("voxline: ", "voxline ready")):
            lines.append(line)
        if line.startswith("voxline ready"):
            break
    return lines


def vllm_pid(server: ServerProcess) -> int:
    match = re.search(r"vLLM server pid (\d+) starting", server.output)  # log or progress line
    assert match, server.output[-3000:]
    return int(match.group(1))


@pytest.mark.slow
def test_serve_starts_vllm_and_shows_its_progress(vllm_serve):
    server = vllm_serve["server"]
    lines = progress_lines(server)
    print("\n" + "\n".join(lines))

    def at(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matches {pattern!r}:\n" + "\n".join(lines)
        return found[0]

    # The model is converted once, then vLLM starts with the elapsed time shown while it
    # loads, then the persona's prefix is warmed; only then is the server ready.
    assert (
        at(r"converting SmolLM2.*\.gguf for vLLM into .*checkpoints")
        < at(r"converted smollm2 for vLLM in [\d.]+ s")
        < at(r"vLLM server pid \d+ starting on http://127\.0\.0\.1:\d+")
        < at(r"vLLM server starting: \d+ s")
        < at(r"vLLM server ready in [\d.]+ s")
        < at(r"persona bank_support: prompt prefix \w+ warmed in [\d.]+ s")
        < at(r"^voxline ready in [\d.]+ s: personas bank_support; serving on http://")
    )
    assert "Traceback" not in server.output

    ready = httpx.get(vllm_serve["url"] + "/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    # vLLM runs its engine in a child process of the API server: both are running.
    group = descendants(vllm_pid(server))
    assert any(name.startswith("VLLM::EngineCor") for name in group.values()), group


@pytest.mark.slow
async def test_a_second_start_reuses_the_converted_checkpoint(vllm_serve):
    checkpoints: Path = vllm_serve["checkpoints"]
    [checkpoint] = [path for path in checkpoints.iterdir() if not path.name.startswith(".")]
    written = (checkpoint / "config.json").stat().st_mtime_ns
    lines: list[str] = []
    # What the Runtime runs on every start. No Python could convert anything here: the
    # model given to vLLM can only be the checkpoint the first start left.
    model = await prepare_vllm_model(
        "smollm2",
        Path("/nonexistent/python"),
        resolve_llm_gguf("smollm2"),
        checkpoint_dir=checkpoints,
        progress=lines.append,
    )
    assert model == str(checkpoint)
    assert lines == [f"vLLM checkpoint of smollm2: reusing {checkpoint}"]
    assert (checkpoint / "config.json").stat().st_mtime_ns == written


@pytest.mark.slow
def test_a_phone_call_is_answered_on_vllm(vllm_serve):
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(PHONE_QUESTION), dtype=np.int16)
    dialer = TwilioCaller(vllm_serve["url"], auth_token=AUTH_TOKEN)
    result = asyncio.run(dialer.call(pcm.astype(np.float32) / 32768.0, voice.sample_rate))
    assert len(result.turns) == 1
    turn = result.turns[0]
    print(f"\nphone call on vLLM: heard the reply {turn.latency_ms} ms after the question")
    assert turn.latency_ms is not None and turn.latency_ms > 0
    reply = result.heard[int(turn.caller_end * RATE) :]
    assert np.abs(reply).max() > 1000, "the caller heard no reply"
    metrics = httpx.get(vllm_serve["url"] + "/metrics", timeout=10).text
    # The reply came from vLLM: its prefix cache served the persona's warmed prompt.
    ratio = re.search(r'voxline_llm_prefix_cache_hit_ratio\{kind="vllm",[^}]*\} (\S+)', metrics)
    assert ratio and float(ratio.group(1)) > 0, metrics
    # vLLM batches: every call may have a request at the server, none waits for a slot.
    slots = re.search(r'voxline_llm_slots\{kind="vllm",[^}]*\} (\S+)', metrics)
    assert slots and float(slots.group(1)) == MAX_CALLS, metrics


@pytest.mark.slow
def test_a_browser_call_is_answered_on_vllm(vllm_serve):
    wav = microphone(vllm_serve["tmp"], BROWSER_QUESTION, "question")
    report = asyncio.run(call_from_browser(vllm_serve["url"], wav))
    check_conversation(report, BROWSER_QUESTION)


@pytest.mark.slow
def test_sigterm_during_start_up_stops_vllm(vllm_serve, voxline_env):
    port = free_port()
    config = vllm_serve["tmp"] / "start-and-stop.yaml"
    checkpoints = vllm_serve["checkpoints"]  # converted: vLLM starts at once
    config.write_text(
        f"default_persona: {BANK_PERSONA}\nengines:\n  vllm: {{checkpoint_dir: {checkpoints}}}\n"
    )
    command = [VOXLINE, "serve", "--config", str(config), "--port", str(port)]
    env = {**voxline_env, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    server = ServerProcess(command, env=env, ready_marker="vLLM server pid")
    try:
        server.wait_ready(120)
        started = descendants(server.process.pid)
        vllm = vllm_pid(server)
        assert vllm in started, started
    finally:
        code = server.stop(timeout=60)
    assert code == 143, server.output[-3000:]
    assert "voxline: SIGTERM during start-up: stopping" in server.output
    left = {pid: name for pid, name in started.items() if running(pid)}
    assert not left, f"still running after SIGTERM: {left}"
    assert "Traceback" not in server.output


@pytest.mark.slow
def test_sigterm_stops_every_process_serve_started(vllm_serve):
    server: ServerProcess = vllm_serve["server"]
    started = descendants(server.process.pid)
    vllm = vllm_pid(server)
    engine = [pid for pid, name in started.items() if name.startswith("VLLM::EngineCor")]
    assert vllm in started and engine, started
    code = server.stop(timeout=60)
    assert code == 0, server.output[-3000:]  # SIGTERM with no call left: drained at once
    left = {pid: name for pid, name in started.items() if running(pid)}
    assert not left, f"still running after SIGTERM: {left}"
    assert f"vLLM server pid {vllm} stopped" in server.output
    assert "Traceback" not in server.output


# --- without vLLM ------------------------------------------------------------------------------


@pytest.mark.parametrize("python", [sys.executable, "/nonexistent/bin/python"])
def test_without_vllm_serve_says_so_in_one_line(tmp_path, python):
    config = tmp_path / "voxline.yaml"
    config.write_text(f"default_persona: {BANK_PERSONA}\nengines:\n  vllm: {{python: {python}}}\n")
    env = {**os.environ, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "VOXLINE_OFFLINE": "1"}
    command = [VOXLINE, "serve", "--config", str(config), "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    reason = "cannot import vllm" if python == sys.executable else "does not exist"
    assert line.startswith(f"voxline: error: vLLM is not installed ({python} {reason})"), line
    assert "`bash scripts/install.sh`" in line and "--llm llama_cpp" in line
    assert f"engines.llm.backend: llama_cpp in {config}" in line


@pytest.mark.slow
def test_without_vllm_the_configured_fallback_serves_with_llama_cpp(tmp_path, voxline_env):
    port = free_port()
    config = tmp_path / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            default_persona: {BANK_PERSONA}
            engines:
              llm: {{fallback_to_llama_cpp: true}}
              vllm: {{python: /nonexistent/bin/python}}
            """
        )
    )
    server = start_voxline(config, {**voxline_env, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}, port)
    try:
        assert re.search(
            r"voxline: warning: vLLM is not installed \(/nonexistent/bin/python does not exist\);"
            r" engines\.llm\.fallback_to_llama_cpp is set: serving with llama\.cpp",
            server.output,
        ), server.output
        assert "voxline: llama.cpp server pid" in server.output
        assert "vLLM server pid" not in server.output
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'kind="llama_cpp"' in metrics and 'kind="vllm"' not in metrics
    finally:
        server.stop()


# --- which LLM each command runs ---------------------------------------------------------------


def test_serve_runs_vllm_and_talk_llama_cpp_unless_the_config_says(tmp_path):
    default = ServerConfig()
    assert default.engines.llm.backend is None
    assert default.for_command("serve").engines.llm.backend == "vllm"
    assert default.for_command("talk").engines.llm.backend == "llama_cpp"
    light = tmp_path / "voxline.yaml"
    light.write_text("engines:\n  llm: {backend: llama_cpp}\n")
    assert load_config(light).for_command("serve").engines.llm.backend == "llama_cpp"
    chosen = default.with_llm_backend("vllm").for_command("talk")
    assert chosen.engines.llm.backend == "vllm"
    assert chosen.engines.whisper == default.engines.whisper  # nothing else changes


def test_an_unknown_backend_names_the_field(tmp_path):
    config = tmp_path / "voxline.yaml"
    config.write_text("engines:\n  llm: {backend: vlm}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    message = str(error.value)
    assert str(config) in message and "engines.llm.backend" in message
    assert "'llama_cpp' or 'vllm'" in message
    assert "\n" not in message


def test_the_llm_flag_overrides_the_config(tmp_path):
    config = tmp_path / "voxline.yaml"
    config.write_text(
        f"default_persona: {BANK_PERSONA}\n"
        "engines:\n  llm: {backend: llama_cpp}\n  vllm: {python: /nonexistent/bin/python}\n"
    )
    command = [VOXLINE, "serve", "--config", str(config), "--llm", "vllm"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "vLLM is not installed" in done.stderr, done.stderr
    command[-1] = "llamacpp"
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'llamacpp'" in done.stderr
