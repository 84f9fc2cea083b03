"""How many threads each engine gets: one table for the whole process, sized from the cores.

Every engine that computes on the CPU takes its thread counts from
:func:`cpu_budget`, through the defaults of :mod:`voxline.engine_config` (a value set in
``voxline.yaml`` wins). Without a budget each library picks for itself: llama.cpp
and vLLM take every core, ONNX Runtime takes one spinning thread per physical core
for each session, CTranslate2 four; on a 2-core machine the engines of four calls
then fight for the cores. The figures that chose this table are in docs/cpu.md
(benchmarks/tts_concurrency.py, benchmarks/stt_concurrency.py).

The rules:

* in-process model runs (Whisper, Piper, the end-of-turn model) use **one thread
  each** and run concurrently on several workers: on 2 cores one thread per run
  with two runs at once beats two threads per run (Whisper and Piper: docs/cpu.md).
  One-thread ONNX sessions have no idle-spinning pool;
* the LLM server leaves at least one core to the others: 1 thread on 2 cores, three
  quarters of the cores above 4 (at most 32). Its threads meet after every layer, so
  one thread that waits for a core busy with Whisper or Piper stalls every token:
  with one core busy, llama.cpp with 2 threads took up to 2.1 s for a token and vLLM
  101 ms a token, against 21 and 41 ms with 1 thread (benchmarks/llm_threads.py);
* Whisper gets one worker per core up to 2, then one per two cores (at most 8);
  Piper two workers (one of them kept for first chunks), one per four cores from 8
  cores (at most 8); the end-of-turn model one worker;
* the Silero VAD of each call runs on the event loop, no thread of its own (~0.1 ms per
  32 ms of audio; ``voxline/processors/vad.py`` says why): it has no entry here.

``total_threads`` is bounded by :data:`MAX_THREADS_PER_CORE` threads per core
(6 on 2 cores: LLM 1, Whisper 2, Piper 2, end-of-turn 1), and no engine alone gets
more threads than there are cores.

No pipecat imports here; this module is a pure function of the core count.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_THREADS_PER_CORE = 4
"""The bound on :attr:`CpuBudget.total_threads` per core (2 cores: at most 8; the table: 6)."""


@dataclass(frozen=True)
class CpuBudget:
    """Thread counts per engine for one machine.

    Attributes:
        cores: the cores budgeted for.
        llm_threads: llama.cpp ``n_threads`` / vLLM's OpenMP threads.
        whisper_workers: Whisper model runs at once.
        whisper_threads: CTranslate2 threads inside one run.
        piper_workers: Piper syntheses at once.
        piper_threads: ONNX Runtime intra-op threads per synthesis.
        turn_workers: end-of-turn model runs at once.
        turn_threads: ONNX Runtime intra-op threads per end-of-turn run.
    """

    cores: int
    llm_threads: int
    whisper_workers: int
    whisper_threads: int
    piper_workers: int
    piper_threads: int
    turn_workers: int
    turn_threads: int

    @property
    def total_threads(self) -> int:
        """Compute threads of the shared engines (the VAD runs on the event loop)."""
        return (
            self.llm_threads
            + self.whisper_workers * self.whisper_threads
            + self.piper_workers * self.piper_threads
            + self.turn_workers * self.turn_threads
        )

    def table(self) -> dict[str, int]:
        """The counts by name, with the total (for logs and ``voxline check``)."""
        return {**asdict(self), "total_threads": self.total_threads}


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota.

    ``os.cpu_count()`` counts the host's cores; a container limited to 2 CPUs
    (``docker --cpus 2``, a Kubernetes ``limits.cpu: 2``) on a 64-core host would
    otherwise size every engine for 64 and be throttled. The quota is read from
    cgroup v2's ``cpu.max`` or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    and rounded up (1.5 CPUs: 2 cores).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs the cgroup may use (quota / period), or None without a limit."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # cgroup v1
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_budget(cores: int | None = None, *, whisper_on_gpu: bool = False) -> CpuBudget:
    """Thread counts for every engine on a machine with ``cores`` cores.

    Args:
        cores: cores the engines share; ``None`` is :func:`available_cores` (the
            process's CPU affinity, capped by its container's CPU limit).
        whisper_on_gpu: Whisper runs on CUDA: one worker (a GPU batches instead).

    Raises:
        ValueError: ``cores`` is below 1.
    """
    if cores is None:
        cores = available_cores()
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    llm = 1 if cores == 1 else min(32, cores - max(1, cores // 4))
    whisper = cores if cores <= 2 else min(8, cores // 2)
    piper = 1 if cores == 1 else max(2, min(8, cores // 4))
    return CpuBudget(
        cores=cores,
        llm_threads=llm,
        whisper_workers=1 if whisper_on_gpu else whisper,
        whisper_threads=1,
        piper_workers=piper,
        piper_threads=1,
        turn_workers=1,
        turn_threads=1,
    )
