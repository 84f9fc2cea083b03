"""Speech-to-text for N concurrent calls: voxline's shared batched Whisper vs stock pipecat.

N simulated calls each speak a few utterances of 1-10 s (Piper and espeak-ng voices,
different texts), starting at staggered times and pausing between utterances as a
caller does while the bot answers. The same schedule runs through

* **voxline**: one :class:`~voxline.engines.whisper.WhisperEngine` shared by all calls,
  batching their utterances (``--max-batch``, ``--max-wait-ms``), and
* **pipecat**: stock ``WhisperSTTService``, one instance (one model) per call, as
  pipecat bots are built, fed through its own ``run_stt``,

with the same CTranslate2 model on the same device and compute type, each side in a
fresh child process so its memory is its own. Prints per N and side: p50/p95 latency
(utterance submitted -> transcript), utterances/s, RSS and what the calls added to it,
WER; then the ratios pipecat / voxline at the largest N.

    .venv/bin/python benchmarks/stt_concurrency.py --calls 1 4 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
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

from benchmarks.common import percentile, rss_mb  # noqa: E402

TEXTS = [
    "Hello.",
    "What is my balance?",
    "I lost my card yesterday.",
    "Can I speak to a human agent please?",
    "Please send the statement to my home address before Friday.",
    "My card was declined at the grocery store this morning, and I do not know why.",
    "I would like to move two hundred dollars from my savings account into my checking account.",
    "Could you tell me when the branch on Main Street opens on Saturday, and whether I need "
    "an appointment to open a new account?",
    "Yes.",
    "How long does a new card take to arrive?",
    "Do you charge a fee for international transfers to Canada?",
    "I think somebody used my card online last week, because there are two payments I never "
    "made to a shop I have never heard of.",
    "Thanks, that is all.",
    "Is the branch open on Sunday?",
    "I moved house last month and I need to update my address and my phone number.",
    "What is the interest rate on the savings account at the moment, and does it change if I "
    "keep more than ten thousand dollars in it?",
]
SAMPLE_RATE = 16_000


def synthesize_pool(directory: Path) -> Path:
    """Speak every text with Piper and espeak-ng alternately; save audio and texts."""
    from tests.speech import caller_voice

    voice = caller_voice()
    audio: dict[str, np.ndarray] = {}
    for index, text in enumerate(TEXTS):
        if index % 2 == 0:
            pcm = np.frombuffer(voice.synthesize_all(text), dtype=np.int16)
            samples, rate = pcm.astype(np.float32) / 32768, voice.sample_rate
        else:
            wav = directory / f"espeak-{index}.wav"
            subprocess.run(
                ["espeak-ng", "-v", "en-us", "-s", "145", "-w", str(wav), text], check=True
            )
            samples, rate = soundfile.read(str(wav), dtype="float32")
        audio[f"u{index}"] = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    pool = directory / "pool.npz"
    np.savez(pool, **audio)
    (directory / "texts.json").write_text(json.dumps(TEXTS))
    return pool


def schedule(calls: int, per_call: int, seed: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per call: its start offset and (utterance index, pause after it) pairs."""
    rng = random.Random(seed)
    plan = []
    for call in range(calls):
        start = rng.uniform(0, 1.0)
        turns = [
            ((call * per_call + k) % len(TEXTS), rng.uniform(0.3, 1.0)) for k in range(per_call)
        ]
        plan.append((start, turns))
    return plan


async def run_voxline(model: str, audio: list[np.ndarray], args: argparse.Namespace):
    from voxline.engines.whisper import WhisperEngine

    engine = WhisperEngine(
        model,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        num_workers=args.num_workers,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        min_window_secs=args.min_window_secs,
    )
    engine.warm_up()

    async def transcribe(call: int, index: int) -> str:
        return (await engine.transcribe(audio[index], beam_size=args.beam_size)).text

    return transcribe, engine.close


async def run_pipecat(model: str, audio: list[np.ndarray], args: argparse.Namespace):
    from pipecat.frames.frames import TranscriptionFrame
    from pipecat.services.whisper.stt import WhisperSTTService

    services = [
        WhisperSTTService(
            settings=WhisperSTTService.Settings(model=model),
            device=args.device,
            compute_type=args.compute_type,
        )
        for _ in range(args.n)
    ]
    pcm = [(clip * 32767).astype(np.int16).tobytes() for clip in audio]

    async def transcribe(call: int, index: int) -> str:
        text = ""
        async for frame in services[call].run_stt(pcm[index]):
            if isinstance(frame, TranscriptionFrame):
                text += frame.text
        return text.strip()

    for call in range(args.n):  # each call's first utterance would pay the lazy init
        await transcribe(call, 0)

    async def close() -> None:
        services.clear()

    return transcribe, close


async def child(args: argparse.Namespace) -> dict:
    """One side at one N, in this process: run the schedule, report figures as JSON."""
    with np.load(args.pool) as stored:
        audio = [stored[f"u{i}"] for i in range(len(TEXTS))]
    model = str(Path(args.model))
    import faster_whisper  # noqa: F401  (both sides import it: count models, not libraries)

    idle_mb = rss_mb_self()
    runner = run_voxline if args.child == "voxline" else run_pipecat
    transcribe, close = await runner(model, audio, args)
    loaded_mb = rss_mb_self()
    latencies: list[float] = []
    heard: list[tuple[int, str]] = []

    async def caller(call: int, start: float, turns: list[tuple[int, float]]) -> None:
        await asyncio.sleep(start)  # the caller's own timing, not synchronisation
        for index, pause in turns:
            began = time.perf_counter()
            text = await transcribe(call, index)
            latencies.append(time.perf_counter() - began)
            heard.append((index, text))
            await asyncio.sleep(pause)

    began = time.perf_counter()
    plan = schedule(args.n, args.per_call, args.seed)
    await asyncio.gather(*(caller(c, start, turns) for c, (start, turns) in enumerate(plan)))
    wall = time.perf_counter() - began
    audio_secs = sum(audio[index].size for index, _ in heard) / SAMPLE_RATE
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await close()
    return {
        "latencies": latencies,
        "heard": heard,
        "wall": wall,
        "audio_secs": audio_secs,
        "idle_mb": idle_mb,
        "loaded_mb": loaded_mb,
        "peak_mb": peak_mb,
    }


def rss_mb_self() -> float:
    import os

    return rss_mb(os.getpid())


def run_side(side: str, n: int, pool: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--child", side, "--n", str(n), "--pool", str(pool),
        "--model", args.model, "--device", args.device, "--compute-type", args.compute_type,
        "--cpu-threads", str(args.cpu_threads), "--num-workers", str(args.num_workers),
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
        "--min-window-secs", str(args.min_window_secs), "--per-call", str(args.per_call),
        "--seed", str(args.seed), "--beam-size", str(args.beam_size),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} N={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from tests.speech import normalize
    from voxline.models import resolve_whisper

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-call", type=int, default=3, help="utterances per call")
    parser.add_argument("--model", default=None, help="Whisper model (default: tiny.en)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--min-window-secs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--beam-size",
        type=int,
        default=5,
        help="voxline's beam; pipecat's service always uses faster-whisper's default, 5",
    )
    parser.add_argument("--child", choices=["voxline", "pipecat"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model_label = args.model or "tiny.en"
    args.model = args.model or resolve_whisper("tiny.en")
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return

    import jiwer

    print(
        f"model {args.model_label} {args.device}/{args.compute_type}; voxline "
        f"cpu_threads={args.cpu_threads} num_workers={args.num_workers} "
        f"max_batch={args.max_batch} max_wait_ms={args.max_wait_ms:g} "
        f"min_window_secs={args.min_window_secs} beam_size={args.beam_size}; pipecat: one "
        f"WhisperSTTService per call; {args.per_call} utterances per call"
    )
    print(
        f"{'N':>2} {'side':8} {'p50 ms':>7} {'p95 ms':>7} {'utt/s':>6} {'RSS MB':>7} "
        f"{'calls MB':>8} {'WER':>6}"
    )
    figures: dict[tuple[int, str], dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        pool = synthesize_pool(Path(scratch))
        for n in args.calls:
            for side in ("voxline", "pipecat"):
                result = run_side(side, n, pool, args)
                latencies = result["latencies"]
                refs = [normalize(TEXTS[index]) for index, _ in result["heard"]]
                hyps = [normalize(text) for _, text in result["heard"]]
                calls_mb = result["peak_mb"] - result["idle_mb"]
                row = {
                    "p50": percentile(latencies, 0.5) * 1000,
                    "p95": percentile(latencies, 0.95) * 1000,
                    "rate": len(latencies) / result["wall"],
                    "rss": result["peak_mb"],
                    "calls_mb": calls_mb,
                    "wer": float(jiwer.wer(refs, hyps)),
                }
                figures[(n, side)] = row
                print(
                    f"{n:>2} {side:8} {row['p50']:7.0f} {row['p95']:7.0f} {row['rate']:6.2f} "
                    f"{row['rss']:7.0f} {row['calls_mb']:8.0f} {row['wer']:6.3f}",
                    flush=True,
                )
    top = max(args.calls)
    ours, theirs = figures[(top, "voxline")], figures[(top, "pipecat")]
    print(
        f"N={top} ratios pipecat/voxline: p95 latency {theirs['p95'] / ours['p95']:.2f}x, "
        f"memory {theirs['calls_mb'] / ours['calls_mb']:.2f}x, "
        f"WER voxline {ours['wer']:.3f} vs pipecat {theirs['wer']:.3f}"
    )


if __name__ == "__main__":
    main()
