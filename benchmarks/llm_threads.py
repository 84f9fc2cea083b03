"""LLM threads when another engine keeps a core busy: why the CPU budget leaves one core free.

On a voice server the LLM never has the machine to itself: Whisper, Piper, the VAD and
the end-of-turn model run on the same cores while it writes. This starts each LLM
backend (llama.cpp, and vLLM's CPU build unless ``--backends`` says otherwise) with 1
and with 2 threads on this machine's cores, and answers the same caller questions
(48 tokens each, temperature 0) with no other load and with one busy core: a
process spinning on one core, standing in for a Whisper or Piper run (each takes one
core: docs/cpu.md). Prints per backend, threads and load: first token p50 / max and
milliseconds per token p50 / max. A thread that must wait for a busy core stalls
every token of a backend whose threads meet at a barrier after each layer.

    .venv/bin/python -m benchmarks.llm_threads
    .venv/bin/python -m benchmarks.llm_threads --backends llama_cpp
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import QUESTIONS, timed_answer  # noqa: E402
from voxline.engine_config import VLLMConfig  # noqa: E402
from voxline.engines.llm import LlamaCppServer, LLMBackend, warm_prefix  # noqa: E402
from voxline.engines.vllm import VLLMServer, prepare_vllm_model  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402

SYSTEM = "You are Ava, the phone assistant of a bank. Answer in one or two short sentences."
SPIN = "while True: pass"


async def answer(backend: LLMBackend, question: str, max_tokens: int) -> tuple[float, float]:
    """First token (ms) and milliseconds per later token of one streamed answer."""
    request = {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    return await timed_answer(backend, request)


async def measure(name: str, server, busy_cores: int, questions: int, max_tokens: int) -> str:
    endpoint = await server.start()
    backend = LLMBackend(endpoint, max_concurrent=1, max_waiting=8)
    spinners: list[subprocess.Popen] = []
    try:
        await warm_prefix(endpoint, SYSTEM)
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy_cores)]
        results = [
            await answer(backend, QUESTIONS[i % len(QUESTIONS)], max_tokens)
            for i in range(questions)
        ]
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        await backend.close()
        await server.stop()
    firsts = [first for first, _ in results]
    rates = [rate for _, rate in results if rate == rate]
    return (
        f"{name:9} threads={server_threads(server)} busy cores={busy_cores}: first token p50 "
        f"{statistics.median(firsts):.0f} ms max {max(firsts):.0f} ms; ms/token p50 "
        f"{statistics.median(rates):.1f} max {max(rates):.1f}"
    )


def server_threads(server) -> int:
    return server.n_threads if isinstance(server, LlamaCppServer) else server.cpu_threads


async def main(args: argparse.Namespace) -> None:
    gguf = resolve_llm_gguf("smollm2")
    for backend in args.backends:
        for threads in args.threads:
            for busy in (0, 1):
                if backend == "llama_cpp":
                    server = LlamaCppServer(gguf, n_threads=threads)
                else:
                    settings = VLLMConfig()
                    model = await prepare_vllm_model("smollm2", settings.python, gguf)
                    server = VLLMServer(model, python=settings.python, cpu_threads=threads)
                line = await measure(backend, server, busy, args.questions, args.max_tokens)
                print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["llama_cpp", "vllm"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    asyncio.run(main(parser.parse_args()))
