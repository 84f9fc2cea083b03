"""How much faster than spoken Piper makes speech on this machine (its real-time factor).

The packaged voice (``en_US-joe-medium``) synthesizes the same reply sentences, short
and long, through :class:`~voxline.engines.piper.PiperEngine` in three settings:
one ONNX Runtime thread (what each of ``voxline serve``'s Piper workers gets, docs/cpu.md),
two threads, and two one-thread workers synthesizing at the same time (two calls'
sentences at once). Real-time factor = synthesis seconds / audio seconds, per
sentence; prints p50 / p95 per setting and the speed-up (1 / RTF) of the median.

    .venv/bin/python -m benchmarks.piper_speed [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from voxline.engines.piper import PiperEngine  # noqa: E402
from voxline.models import PiperVoiceFiles, resolve_piper  # noqa: E402

VOICE = "en_US-joe-medium"
SENTENCES = [
    "Sure, I can help with that.",
    "Your card has been blocked and a new one will arrive within five business days.",
    "Our branches are open Monday to Friday from nine in the morning to five in the "
    "afternoon, and on Saturday mornings until noon.",
    "I'm sorry to hear that,",
    "Before I share your balance, could you tell me the last four digits of your card "
    "and your date of birth?",
]


def factor(engine: PiperEngine, text: str) -> float:
    """Synthesis seconds per second of audio for one sentence."""
    started = time.perf_counter()
    pcm = engine.synthesize_all(text)
    return (time.perf_counter() - started) / (len(pcm) / 2 / engine.sample_rate)


def measure(name: str, threads: int, workers: int, rounds: int) -> float:
    files = resolve_piper(VOICE)
    assert isinstance(files, PiperVoiceFiles)
    engine = PiperEngine(files.model, files.config, threads=threads, workers=workers)
    try:
        factor(engine, SENTENCES[0])  # the session's first run allocates
        texts = SENTENCES * rounds
        with ThreadPoolExecutor(workers) as pool:
            factors = list(pool.map(lambda text: factor(engine, text), texts))
    finally:
        engine.close()
    median = statistics.median(factors)
    print(
        f"{name:32} RTF p50 {median:.3f} p95 {percentile(factors, 0.95):.3f} "
        f"({1 / median:.1f}x faster than spoken, n={len(factors)})",
        flush=True,
    )
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    one = measure("1 thread", 1, 1, args.rounds)
    two = measure("2 threads", 2, 1, args.rounds)
    both = measure("2 workers x 1 thread, at once", 1, 2, args.rounds)
    print(
        f"piper_speed {VOICE}: 1 thread {1 / one:.1f}x, 2 threads {1 / two:.1f}x, "
        f"two at once {1 / both:.1f}x each (RTF {one:.3f} / {two:.3f} / {both:.3f})"
    )


if __name__ == "__main__":
    main()
