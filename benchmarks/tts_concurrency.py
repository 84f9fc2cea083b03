"""Piper first audio when several calls speak at once: the old engine vs the new one.

N calls share one Piper voice. Every round, each call starts a reply at a random
moment (0-0.8 s after the round starts, seeded): a short first chunk, as the
chunker hands it over, then two long sentences. So a call's first chunk usually
arrives while other calls' long sentences are being synthesized. Measured per
reply: request -> first audio bytes of its first chunk (what the caller waits
for), for N = 1 and N = 4:

* old: the engine before issue 15 (one worker, first-in first-out, ONNX Runtime's
  default threads, whole sentences), copied here as it was;
* new: priority to first chunks, long sentences cut at ``max_phonemes``, for
  workers 1/2 x intra-op threads 1/2 (and 2x1 without cutting).

Then whether batching several sentences in one ``session.run`` helps on this CPU.
Everything is measured in one run; ratios are old / new.

    .venv/bin/python benchmarks/tts_concurrency.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from voxline.engines.piper import DEFAULT_MAX_PHONEMES, PiperEngine  # noqa: E402
from voxline.models import PiperVoiceFiles, resolve_piper  # noqa: E402

FIRST_CHUNKS = [
    "Sure, let me check that.",
    "Of course, one moment.",
    "I'm sorry to hear that.",
    "Yes, you can do that.",
    "Thanks for waiting.",
    "Good question.",
]
LONG_SENTENCES = [
    "Your savings account holds four thousand two hundred dollars and your checking account "
    "holds one thousand and fifty dollars as of this morning, after the transfer you made.",
    "The branch on Main Street is open from nine in the morning until five in the afternoon "
    "on weekdays, and on Saturday mornings until noon, but it is closed on Sundays.",
    "A new card usually arrives within five business days of the request, and you can use "
    "the temporary card number in the mobile app until then for online payments.",
    "The transfer of two hundred dollars to your savings account went through yesterday "
    "evening, and you will see it on your statement at the end of the month as usual.",
]


class LegacyPiperEngine:
    """The Piper engine as it was before issue 15: one worker, first in, first out."""

    def __init__(self, model: Path, config: Path):
        from piper import PiperVoice

        self._voice = PiperVoice.load(model, config_path=config)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

    async def synthesize(self, text: str, *, first: bool = False) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        chunks: Iterator = iter(self._voice.synthesize(text))
        while True:
            audio = await loop.run_in_executor(self._executor, _next_audio, chunks)
            if audio is None:
                return
            yield audio

    def warm_up(self) -> None:
        for _ in self._voice.synthesize("Hello."):
            pass

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _next_audio(chunks: Iterator) -> bytes | None:
    chunk = next(chunks, None)
    return None if chunk is None else chunk.audio_int16_bytes


@dataclass
class Result:
    first_audio: list[float] = field(default_factory=list)
    wall_secs: float = 0.0


async def run_round(engine, calls: int, offsets: list[float], round_: int) -> list[float]:
    """One round: every call starts a reply at its offset; first-audio latency of each."""
    first_audio: list[float] = []

    async def reply(call: int) -> None:
        await asyncio.sleep(offsets[call])
        text = FIRST_CHUNKS[(call + round_) % len(FIRST_CHUNKS)]
        asked = time.perf_counter()
        async for _ in engine.synthesize(text, first=True):
            first_audio.append(time.perf_counter() - asked)
            asked = float("inf")  # only the first piece counts
        for k in range(2):
            sentence = LONG_SENTENCES[(call + round_ + k) % len(LONG_SENTENCES)]
            async for _ in engine.synthesize(sentence):
                pass

    await asyncio.gather(*(reply(call) for call in range(calls)))
    return first_audio


def _fmt(values: list[float]) -> tuple[float, float]:
    return 1000 * percentile(values, 0.5), 1000 * percentile(values, 0.95)


def measure_batching(files: PiperVoiceFiles, threads: int, repeats: int) -> list[tuple]:
    """Seconds per sentence: one run per sentence vs all in one padded run."""
    engine = PiperEngine(files.model, files.config, threads=threads, max_phonemes=None)
    voice = engine._voice
    sentences = [voice.phonemes_to_ids(engine._pieces(text)[0]) for text in LONG_SENTENCES]
    scales = np.array(
        [voice.config.noise_scale, voice.config.length_scale, voice.config.noise_w_scale],
        dtype=np.float32,
    )
    rows = []
    for size in (1, 2, 4):
        batch = sentences[:size]
        width = max(len(ids) for ids in batch)
        padded = np.zeros((size, width), dtype=np.int64)
        for row, ids in enumerate(batch):
            padded[row, : len(ids)] = ids
        lengths = np.array([len(ids) for ids in batch], dtype=np.int64)
        voice.session.run(None, {"input": padded, "input_lengths": lengths, "scales": scales})
        one_by_one, together = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            for ids in batch:
                voice.session.run(
                    None,
                    {
                        "input": np.array([ids], dtype=np.int64),
                        "input_lengths": np.array([len(ids)], dtype=np.int64),
                        "scales": scales,
                    },
                )
            one_by_one.append((time.perf_counter() - started) / size)
            started = time.perf_counter()
            voice.session.run(None, {"input": padded, "input_lengths": lengths, "scales": scales})
            together.append((time.perf_counter() - started) / size)
        rows.append((size, min(one_by_one), min(together)))
    engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="replies per call")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    files = resolve_piper("en_US-joe-medium")
    assert isinstance(files, PiperVoiceFiles)

    configs: list[tuple[str, dict | None]] = [
        ("old: 1 worker FIFO, ORT default threads, whole sentences", None),
        ("new: 1 worker x 1 thread", dict(workers=1, threads=1)),
        ("new: 1 worker x 2 threads", dict(workers=1, threads=2)),
        ("new: 2 workers x 1 thread", dict(workers=2, threads=1)),
        ("new: 2 workers x 2 threads", dict(workers=2, threads=2)),
        ("new: 2 workers x 1 thread, no reserved worker", dict(workers=2, reserve_first=False)),
        ("new: 2 workers x 1 thread, whole sentences", dict(workers=2, max_phonemes=None)),
    ]
    engines = {}
    for name, options in configs:
        if options is None:
            engines[name] = LegacyPiperEngine(files.model, files.config)
        else:
            engines[name] = PiperEngine(files.model, files.config, **options)
        engines[name].warm_up()
    print(
        f"Piper first audio of a reply's first chunk, {os.cpu_count()} cores, "
        f"{args.rounds} replies per call, max_phonemes={DEFAULT_MAX_PHONEMES}, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    print("(configurations take turns round by round, so background load hits them alike)")
    print(f"{'engine':58} {'N':>2} {'p50 ms':>7} {'p95 ms':>7} {'wall s':>7}")
    table: dict[tuple[str, int], Result] = {}
    rng = random.Random(args.seed)
    for calls in (1, 4):
        for round_ in range(args.rounds):
            offsets = [rng.uniform(0, 0.8) for _ in range(calls)]
            for name, _ in configs:
                result = table.setdefault((name, calls), Result())
                started = time.perf_counter()
                result.first_audio += asyncio.run(run_round(engines[name], calls, offsets, round_))
                result.wall_secs += time.perf_counter() - started
        for name, _ in configs:
            result = table[(name, calls)]
            p50, p95 = _fmt(result.first_audio)
            print(f"{name:58} {calls:>2} {p50:>7.0f} {p95:>7.0f} {result.wall_secs:>7.1f}")
    for engine in engines.values():
        engine.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    old = configs[0][0]
    print("\nratio old / new (first audio; > 1 means the new engine is faster)")
    for name, _ in configs[1:]:
        cells = []
        for calls in (1, 4):
            o50, o95 = _fmt(table[(old, calls)].first_audio)
            n50, n95 = _fmt(table[(name, calls)].first_audio)
            cells.append(f"N={calls}: p50 {o50 / n50:4.2f}x p95 {o95 / n95:4.2f}x")
        print(f"{name:58} " + "   ".join(cells))

    print("\nbatching sentences in one session.run (ms of model time per sentence)")
    print(f"{'threads':>7} {'batch':>5} {'one by one':>10} {'batched':>8} {'gain':>6}")
    for threads in (1, 2):
        for size, single, batched in measure_batching(files, threads, repeats=3):
            print(
                f"{threads:>7} {size:>5} {1000 * single:>10.0f} {1000 * batched:>8.0f} "
                f"{single / batched:>5.2f}x"
            )


if __name__ == "__main__":
    main()
