"""Pieces shared by the benchmarks: caller speech, servers, process memory, percentiles."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import soundfile
import soxr
import yaml

from tests.servers import ServerProcess, start_voxline
from voxline.engines.llm import free_port
from voxline.transports.levels import is_voiced
from voxline.transports.twilio_caller import RATE as PHONE_RATE

# Caller questions for the bank persona, one per simulated call or round.
QUESTIONS = [
    "What is my account balance?",
    "What time does the branch open on Saturday?",
    "I lost my card yesterday, what should I do?",
    "Can I speak to a human agent please?",
    "How long does a new card take to arrive?",
    "Do you charge a fee for international transfers?",
    "Is the branch open on Sunday?",
    "My card was declined at the store, why?",
]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the LLM server), in MB."""
    total = 0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split()[3]) == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- callers' speech: espeak-ng, never the Piper voice the bot and the tests use ----------

SAMPLE_RATE = 16_000
"""The rate caller clips are made at."""

Voice = tuple[str, int, int]
"""An espeak-ng voice: name (with variant), words per minute, pitch."""


@dataclass(frozen=True)
class Utterance:
    """What a caller says: one part, or two parts with ``pause`` seconds of silence."""

    first: str
    second: str = ""
    pause: float = 0.0

    @property
    def text(self) -> str:
        return f"{self.first} {self.second}".strip()

    @property
    def paused(self) -> bool:
        return bool(self.second)


# Every first half before a pause ends where the Smart Turn model hears an unfinished
# turn (p(complete) <= 0.15 for all seven voices, checked with the engine alone).
# First halves that end in a falling tone ("So I was wondering if", "... and") are
# judged complete as often as not, so a pause there tests the model, not speculation.
UTTERANCES = [
    Utterance("I was wondering if you could", "tell me when the branch opens on Saturday", 0.8),
    Utterance("What is my account balance?"),
    Utterance("My card number is um", "actually I just want to know my balance", 0.7),
    Utterance("I lost my card yesterday. What should I do?"),
    Utterance("Could you tell me um", "how long a new card takes to arrive", 0.9),
    Utterance("Can I speak to a human agent please?"),
    Utterance("I need to talk to someone about um", "a payment I do not recognize", 0.6),
    Utterance("Do you charge a fee for international transfers?"),
    Utterance("I was hoping you could", "block my card because I lost it", 1.0),
    Utterance("Is the branch open on Sunday?"),
    Utterance("I want to send money to um", "my sister in Canada", 0.8),
    Utterance("My card was declined at the store. Why?"),
    Utterance("I would like to know whether", "the branch is open on Sunday", 0.7),
    Utterance("How long does a new card take to arrive?"),
    Utterance("So I was wondering if you could", "put me through to a human agent", 0.9),
    Utterance("What time does the branch open on Saturday?"),
    Utterance("Can you read me my last three transactions?"),
    Utterance("What are your opening hours during the week?"),
    Utterance("I think someone used my card without asking me."),
    Utterance("How do I change the address on my account?"),
]


def espeak(text: str, voice: Voice, tmp: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng at 16 kHz, without its silence before and after."""
    name, speed, pitch = voice
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmp) as wav:
        command = ["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", wav.name]
        subprocess.run([*command, text], check=True)
        samples, rate = soundfile.read(wav.name, dtype="float32")
    audio = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0] : loud[-1] + 1]


def silence(secs: float) -> np.ndarray:
    return np.zeros(round(secs * SAMPLE_RATE), dtype=np.float32)


def caller_clip(utterance: Utterance, voice: Voice, tmp: Path) -> np.ndarray:
    """The caller's clip: the voiced parts, the pause between, 0.2 s of silence after."""
    parts = [espeak(utterance.first, voice, tmp)]
    if utterance.paused:
        parts += [silence(utterance.pause), espeak(utterance.second, voice, tmp)]
    return np.concatenate([*parts, silence(0.2)])


def bot_voiced_at(heard: np.ndarray, start: float, end: float) -> bool:
    """Whether the bot's audio heard on the phone was voiced between ``start`` and ``end``."""
    size = PHONE_RATE // 50
    begin, stop = max(0, int(start * PHONE_RATE)), int(end * PHONE_RATE)
    return any(is_voiced(heard[at : at + size]) for at in range(begin, stop - size + 1, size))


# --- servers ---------------------------------------------------------------------------------


def serve_voxline(
    tmp: Path,
    *,
    numbers: dict[str, Path],
    default_persona: Path,
    token: str,
    max_calls: int,
    engines: dict[str, Any] | None = None,
    log_level: str | None = None,
) -> tuple[ServerProcess, str]:
    """``voxline serve`` on a free loopback port with a ``voxline.yaml`` written here.

    ``log_level`` INFO makes it log a ``turn {json}`` line per turn. Returns the
    server (its output is collected) and its base URL.
    """
    port = free_port()
    config: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "default_persona": str(default_persona),
        "max_calls": max_calls,
        "numbers": {number: str(path) for number, path in numbers.items()},
    }
    if engines:
        config["engines"] = engines
    path = tmp / "voxline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "TWILIO_AUTH_TOKEN": token, "VOXLINE_OFFLINE": "1"}
    if log_level:
        env["VOXLINE_LOG_LEVEL"] = log_level
    return start_voxline(path, env, port), f"http://127.0.0.1:{port}"


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    return percentile(values, 0.95) if values else float("nan")


# --- memory of a whole stack -------------------------------------------------------------------


def process_label(process: psutil.Process) -> str:
    """A short name for a process of the stack: what it runs, not its interpreter."""
    try:
        name = process.name()
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    for marker, label in (
        ("EngineCore", "vLLM EngineCore"),
        ("vllm.entrypoints", "vLLM API server"),
        ("llama_cpp.server", "llama.cpp server"),
        ("voxline serve", "voxline serve"),
        ("baseline_pipecat", "stock pipecat bot"),
    ):
        if marker in name or marker in command:
            return label
    return name


class StackMemory:
    """Samples the RSS of every process in the trees under ``roots`` in a thread.

    Between :meth:`start` and :meth:`stop` it keeps, per process (pid and label), the
    largest RSS seen, and the largest sum over the whole stack at one sample.
    """

    def __init__(self, roots: list[int], interval: float = 0.25):
        self.roots = roots
        self.interval = interval
        self.peak: dict[tuple[int, str], float] = {}
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._labels: dict[int, str] = {}

    def sample(self) -> float:
        """One sample; returns the stack's total RSS in MB."""
        total = 0.0
        for root in self.roots:
            try:
                top = psutil.Process(root)
                processes = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for process in processes:
                try:
                    rss = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if process.pid not in self._labels:
                    self._labels[process.pid] = process_label(process)
                key = (process.pid, self._labels[process.pid])
                self.peak[key] = max(self.peak.get(key, 0.0), rss)
                total += rss
        self.peak_total = max(self.peak_total, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> StackMemory:
        self.peak, self.peak_total = {}, 0.0
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def by_label(self) -> dict[str, float]:
        """Peak RSS (MB) per kind of process, summed over processes of the same kind."""
        totals: dict[str, float] = {}
        for (_, label), rss in sorted(self.peak.items()):
            totals[label] = totals.get(label, 0.0) + rss
        return totals
