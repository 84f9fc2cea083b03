"""Pieces shared by the benchmarks: questions, servers, the phone line, process memory,
percentiles.

Caller speech (espeak-ng voices and utterances), simultaneous callers and the
memory of a whole stack live in :mod:`voxline.bench`, which ``voxline bench`` runs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
from pipecat.audio.utils import ulaw_to_pcm

from tests.servers import serve_voxline  # noqa: F401  (benchmarks import it from here)
from voxline.engines.llm_backend import LLMBackend
from voxline.transports.caller_frames import mulaw_frames
from voxline.transports.twilio import TWILIO_RATE

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


async def over_the_phone(
    audio: np.ndarray, rate: int, resampler: BaseAudioResampler
) -> list[tuple[bytes, bool]]:
    """``audio`` as ``voxline serve`` receives it from a phone caller, frame by frame.

    The Twilio-protocol caller's 20 ms µ-law frames, each decoded and raised to 16 kHz
    by ``resampler`` as the Twilio serializer does: (16-bit PCM, whether the caller's
    frame was voiced). A resampler that holds audio back gives empty frames meanwhile.
    """
    return [
        (await ulaw_to_pcm(frame, TWILIO_RATE, 16_000, resampler), voiced)
        for frame, voiced in mulaw_frames(np.asarray(audio, dtype=np.float32), rate)
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


# --- servers ---------------------------------------------------------------------------------


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    return percentile(values, 0.95) if values else float("nan")


async def timed_answer(backend: LLMBackend, request: dict) -> tuple[float, float]:
    """First token (ms) and milliseconds per later token of one streamed completion of
    ``request`` (OpenAI chat arguments); a tool call's pieces count as tokens."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async for chunk in backend.stream_chat(**request):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None and (delta.content or delta.tool_calls):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    if first is None:
        return (ended - started) * 1000, float("nan")
    return (first - started) * 1000, (ended - first) * 1000 / max(1, tokens - 1)
