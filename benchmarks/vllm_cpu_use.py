"""CPU used by each vLLM process, idle and while one reply streams: "mp" vs "uni" executor.

vLLM's CPU platform runs the model in a worker process of its own (the "mp"
executor) unless told otherwise. The engine process then waits for each step's
result on a shared-memory queue by spinning (``sched_yield``) for up to a second
after each read, and the idle worker spins on its own queue: CPU that Whisper,
Piper and the call's event loop need on a small machine. voxline starts vLLM on a
CPU with the "uni" executor (the model runs inside the engine process). This
starts the real vLLM server both ways with the same threads, streams the same
reply three times, and prints each process's share of a core while idle (2 s) and
while generating, and the ms per streamed token.

    .venv/bin/python -m benchmarks.vllm_cpu_use               # 1 thread (2 cores' budget)
    .venv/bin/python -m benchmarks.vllm_cpu_use --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxline.engine_config import VLLMConfig  # noqa: E402
from voxline.engines.vllm import VLLMServer, prepare_vllm_model  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402

EXECUTORS = {"mp": ["--distributed-executor-backend", "mp"], "uni": []}
QUESTION = "Tell me a long story about a small bank in a fishing town."


def processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def label(process: psutil.Process) -> str:
    line = " ".join(process.cmdline()).strip()
    if "api_server" in line:
        return "API server"
    if "resource_tracker" in line:
        return "resource tracker"
    return line.split()[0] if line else process.name()


def cpu_seconds(procs: list[psutil.Process]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for process in procs:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        name = label(process)
        seconds[name] = seconds.get(name, 0.0) + times.user + times.system
    return seconds


def shares(before: dict[str, float], after: dict[str, float], secs: float) -> dict[str, float]:
    return {name: (after[name] - before.get(name, 0.0)) / secs for name in after}


async def stream_once(client: httpx.AsyncClient, server: VLLMServer, tokens: int) -> int:
    body = {
        "model": server.model_alias,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    pieces = 0
    url = f"{server.endpoint.api_url}/chat/completions"
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                pieces += 1
    return pieces


async def measure(executor: str, threads: int, runs: int, tokens: int) -> list[str]:
    settings = VLLMConfig()
    model = await prepare_vllm_model("smollm2", settings.python, resolve_llm_gguf("smollm2"))
    server = VLLMServer(
        model, python=settings.python, cpu_threads=threads, extra_args=EXECUTORS[executor]
    )
    began = time.monotonic()
    await server.start()
    ready = time.monotonic() - began
    idle: dict[str, list[float]] = {}
    busy: dict[str, list[float]] = {}
    per_token: list[float] = []
    try:
        assert server.pid is not None
        procs = processes(server.pid)
        async with httpx.AsyncClient(timeout=120) as client:
            await stream_once(client, server, 8)  # warm-up
            for _ in range(runs):
                before, start = cpu_seconds(procs), time.monotonic()
                await asyncio.sleep(2.0)
                for name, share in shares(before, cpu_seconds(procs), 2.0).items():
                    idle.setdefault(name, []).append(share)
                before, start = cpu_seconds(procs), time.monotonic()
                pieces = await stream_once(client, server, tokens)
                secs = time.monotonic() - start
                per_token.append(secs / max(1, pieces) * 1000)
                for name, share in shares(before, cpu_seconds(procs), secs).items():
                    busy.setdefault(name, []).append(share)
    finally:
        await server.stop()
    lines = [
        f"executor={executor} threads={threads}: ready in {ready:.0f} s; "
        f"ms/token p50 {statistics.median(per_token):.1f}; processes {len(busy)}"
    ]
    for name in busy:
        lines.append(
            f"  {name:20} idle {statistics.median(idle[name]):6.1%} of a core, "
            f"generating {statistics.median(busy[name]):6.1%}"
        )
    total_idle = sum(statistics.median(values) for values in idle.values())
    total_busy = sum(statistics.median(values) for values in busy.values())
    lines.append(f"  {'all':20} idle {total_idle:6.1%} of a core, generating {total_busy:6.1%}")
    return lines


async def main(args: argparse.Namespace) -> None:
    summary = []
    for executor in args.executors:
        lines = await measure(executor, args.threads, args.runs, args.tokens)
        print("\n".join(lines), flush=True)
        summary.append(lines[-1].split("all")[1].strip())
    print(
        "vllm_cpu_use: "
        + " | ".join(f"{e}: {s}" for e, s in zip(args.executors, summary, strict=True))
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executors", nargs="+", choices=list(EXECUTORS), default=["mp", "uni"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=150)
    asyncio.run(main(parser.parse_args()))
