"""First-token latency of 1 and 4 concurrent calls: llama.cpp vs vLLM on this CPU, same model.

Starts each backend in turn as the Runtime would (SmolLM2-135M: the packaged GGUF for
llama.cpp, the same weights dequantized for vLLM), warms a ~1 500-token persona-like
system prompt, then sends rounds of N simultaneous requests (N = 1 and 4), each a
different caller question after the shared prompt. Prints per backend and N the
p50/p95 time to first token and the wall time of a round, then the llama.cpp / vLLM
ratios at the largest N.

    .venv/bin/python benchmarks/llm_concurrency.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import QUESTIONS, percentile  # noqa: E402
from voxline.engine_config import VLLMConfig  # noqa: E402
from voxline.engines.llm import LlamaCppServer, LLMBackend, warm_prefix  # noqa: E402
from voxline.engines.vllm import VLLMServer, prepare_vllm_model  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402
from voxline.personas import load_persona  # noqa: E402


def long_prompt() -> str:
    """The bank persona's prompt, grown with policy text to about 1 500 tokens."""
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    policy = (
        "Policy {n}: when a caller asks about fees, overdrafts, transfers or cards, answer "
        "from the published price list, say the amount in words, and offer to send the "
        "details by mail. Never promise a refund; a specialist reviews every request. "
    )
    return persona.system_prompt + "\n\n" + "".join(policy.format(n=n) for n in range(1, 26))


async def first_token(backend: LLMBackend, system: str, question: str) -> float:
    started = time.perf_counter()
    request = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 16,
        "temperature": 0.0,
    }
    first = None
    async for chunk in backend.stream_chat(**request):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


async def measure(name: str, server, calls: list[int], rounds: int) -> dict[int, dict]:
    endpoint = await server.start()
    backend = LLMBackend(endpoint, max_concurrent=max(calls), max_waiting=64)
    system = long_prompt()
    figures: dict[int, dict] = {}
    try:
        await warm_prefix(endpoint, system)
        for n in calls:
            latencies, walls = [], []
            for round_index in range(rounds):
                questions = [QUESTIONS[(round_index * n + i) % len(QUESTIONS)] for i in range(n)]
                started = time.perf_counter()
                latencies += await asyncio.gather(
                    *(first_token(backend, system, q) for q in questions)
                )
                walls.append(time.perf_counter() - started)
            figures[n] = {
                "p50": statistics.median(latencies) * 1000,
                "p95": percentile(latencies, 0.95) * 1000,
                "wall": statistics.median(walls),
            }
            row = figures[n]
            print(
                f"{name:9} N={n}: first token p50 {row['p50']:.0f} ms, p95 {row['p95']:.0f} ms, "
                f"round wall {row['wall']:.2f} s",
                flush=True,
            )
    finally:
        await backend.close()
        await server.stop()
    return figures


async def main(args: argparse.Namespace) -> None:
    gguf = resolve_llm_gguf("smollm2")
    settings = VLLMConfig()
    llama = await measure("llama.cpp", LlamaCppServer(gguf), args.calls, args.rounds)
    model = await prepare_vllm_model("smollm2", settings.python, gguf)
    vllm = await measure("vLLM", VLLMServer(model, python=settings.python), args.calls, args.rounds)
    top = max(args.calls)
    print(
        f"N={top} ratios llama.cpp/vLLM: first token p95 "
        f"{llama[top]['p95'] / vllm[top]['p95']:.2f}x, round wall "
        f"{llama[top]['wall'] / vllm[top]['wall']:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
