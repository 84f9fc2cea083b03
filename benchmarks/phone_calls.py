"""Concurrent phone calls against one ``voxline serve``: latency as heard, and memory.

Starts a voxline server on loopback with the embedded CPU stack (or uses --url),
then places N simultaneous calls with the Twilio-protocol caller (each says a
different question after the greeting, staggered by 0.5 s), for each N in
--calls. Prints per N: p50/p95 voice-to-voice latency as heard by the callers,
answered turns, and the server's RSS; then the ratio of p50 latency at the
largest N to N=1.

    .venv/bin/python benchmarks/phone_calls.py --calls 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import QUESTIONS, percentile, rss_mb  # noqa: E402
from tests.servers import ServerProcess, start_voxline  # noqa: E402
from tests.speech import caller_voice  # noqa: E402
from voxline.engines.llm import free_port  # noqa: E402
from voxline.transports.twilio_caller import TwilioCaller  # noqa: E402

TOKEN = "benchmark-token"


async def place_calls(url: str, count: int) -> list[float | None]:
    voice = caller_voice()

    async def one(i: int) -> float | None:
        await asyncio.sleep(0.5 * i)
        pcm = np.frombuffer(voice.synthesize_all(QUESTIONS[i % len(QUESTIONS)]), dtype=np.int16)
        audio = pcm.astype(np.float32) / 32768.0
        caller = TwilioCaller(url, auth_token=TOKEN)
        result = await caller.call(audio, voice.sample_rate, timeout=240)
        return result.turns[0].latency_ms if result.turns else None

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--url", help="an already running server (TWILIO_AUTH_TOKEN must match)")
    args = parser.parse_args()

    server: ServerProcess | None = None
    url = args.url
    if url is None:
        port = free_port()
        config = Path(tempfile.mkdtemp()) / "voxline.yaml"
        config.write_text(
            f"public_url: http://127.0.0.1:{port}\n"
            f"default_persona: {ROOT / 'personas' / 'bank_support.yaml'}\n"
            f"max_calls: {max(args.calls)}\n"
        )
        env = {**os.environ, "TWILIO_AUTH_TOKEN": TOKEN, "VOXLINE_OFFLINE": "1"}
        server = start_voxline(config, env, port)
        url = f"http://127.0.0.1:{port}"
        print(f"server idle RSS: {rss_mb(server.process.pid):.0f} MB")
    results: dict[int, list[float]] = {}
    try:
        print(f"{'calls':>5} {'answered':>8} {'p50 ms':>8} {'p95 ms':>8} {'RSS MB':>8}")
        for count in args.calls:
            latencies = asyncio.run(place_calls(url, count))
            heard = [value for value in latencies if value is not None]
            results[count] = heard
            memory = rss_mb(server.process.pid) if server else float("nan")
            p50 = statistics.median(heard) if heard else float("nan")
            p95 = percentile(heard, 0.95) if heard else float("nan")
            print(f"{count:>5} {len(heard):>5}/{count:<2} {p50:>8.0f} {p95:>8.0f} {memory:>8.0f}")
    finally:
        if server is not None:
            server.stop()
    low, high = min(results), max(results)
    if results[low] and results[high]:
        ratio = statistics.median(results[high]) / statistics.median(results[low])
        print(f"ratio p50 latency {high} calls / {low} call: {ratio:.2f}")


if __name__ == "__main__":
    main()
