"""End-of-turn decision latency: one caller alone vs several at the same moment, by threads.

One :class:`~voxline.engines.turn_model.EndOfTurnEngine` (pipecat's bundled Smart Turn
v3.2 CPU model) per configuration. Callers' questions are spoken by espeak-ng (a voice
the tests do not use) and resampled to 16 kHz. For each ONNX Runtime thread count:

* **alone**: one caller asks ``--rounds`` decisions one after another;
* **N callers**: ``--callers`` callers ask at the same moment (a burst, not a stagger),
  ``--rounds`` times.

Latency is ``decide()`` called -> decision returned, so it includes the queue wait
behind the other callers. Prints p50/p95 per row, the ratio of each row's p50 to the
1-thread alone p50, and the mean model run and queue wait the engine reported.

    .venv/bin/python benchmarks/turn_model.py --threads 1 2 --callers 4 --rounds 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import QUESTIONS, percentile  # noqa: E402
from voxline.engines.turn_model import EndOfTurnEngine, TurnDecision  # noqa: E402
from voxline.models import resolve_turn_model  # noqa: E402

SAMPLE_RATE = 16_000


def speak(texts: list[str]) -> list[np.ndarray]:
    """Each text spoken by espeak-ng at 16 kHz, with 0.2 s of silence after it."""
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, text in enumerate(texts):
            wav = Path(tmp) / f"{index}.wav"
            subprocess.run(
                ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True
            )
            samples, rate = soundfile.read(str(wav), dtype="float32")
            speech = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
            clips.append(np.concatenate([speech, np.zeros(SAMPLE_RATE // 5, np.float32)]))
    return clips


async def measure(
    engine: EndOfTurnEngine, clips: list[np.ndarray], callers: int, rounds: int
) -> tuple[list[float], list[TurnDecision]]:
    """Latencies of ``rounds`` bursts of ``callers`` decisions asked at the same moment."""
    latencies: list[float] = []
    decisions: list[TurnDecision] = []

    async def ask(clip: np.ndarray) -> None:
        began = time.perf_counter()
        decisions.append(await engine.decide(clip))
        latencies.append(time.perf_counter() - began)

    for round_ in range(rounds):
        burst = [clips[(round_ * callers + k) % len(clips)] for k in range(callers)]
        await asyncio.gather(*(ask(clip) for clip in burst))
    return latencies, decisions


async def main(args: argparse.Namespace) -> None:
    model = resolve_turn_model(args.model)
    clips = speak(QUESTIONS)
    print(
        f"Smart Turn {model.name}: {args.rounds} rounds, max_batch={args.max_batch}, "
        f"workers={args.workers}; latency = decide() -> decision, ms"
    )
    print(
        f"{'threads':>7} {'callers':>7} {'p50':>7} {'p95':>7} {'ratio':>6} "
        f"{'run':>7} {'wait':>7} {'complete':>9}"
    )
    baseline: float | None = None
    for threads in args.threads:
        engine = EndOfTurnEngine(
            model,
            threads=threads,
            max_batch=args.max_batch,
            workers=args.workers,
            max_wait_ms=args.max_wait_ms,
        )
        try:
            await measure(engine, clips, 1, 3)  # warm-up
            for callers in (1, args.callers):
                latencies, decisions = await measure(engine, clips, callers, args.rounds)
                p50 = statistics.median(latencies)
                baseline = baseline or p50
                complete = sum(d.complete for d in decisions) / len(decisions)
                print(
                    f"{threads:>7} {callers:>7} {p50 * 1000:>7.1f} "
                    f"{percentile(latencies, 0.95) * 1000:>7.1f} {p50 / baseline:>6.2f} "
                    f"{statistics.fmean(d.run_secs for d in decisions) * 1000:>7.1f} "
                    f"{statistics.fmean(d.wait_secs for d in decisions) * 1000:>7.1f} "
                    f"{complete:>9.0%}"
                )
        finally:
            await engine.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smart-turn-v3.2")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
