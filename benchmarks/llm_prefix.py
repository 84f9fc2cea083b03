"""Time to first token with the persona's prefix cold vs cached, on the embedded llama.cpp server.

Starts the embedded server (SmolLM2-135M, as ``voxline serve`` does), then for each
of --rounds caller questions sends the example persona's request (system prompt,
per-call facts, the question, its tools) twice over:

* **cold**: the persona's prompt behind a one-line, per-round preamble, so no
  prefix of it is cached (what every call would pay without prefix caching);
* **warm**: the persona's prompt exactly, after one warm-up (what voxline does
  when a persona loads), each round a different question.

Prints median and p95 first-token latency of each, decode tokens/s, the prompt
tokens the server evaluated per request (read from its log), and last
``ratio=`` cold / warm median.

    .venv/bin/python benchmarks/llm_prefix.py --rounds 8
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
from voxline.bot.tool_wiring import openai_tools  # noqa: E402
from voxline.engine_config import EmbeddedLLMConfig  # noqa: E402
from voxline.engines.llm import LlamaCppServer, LLMBackend, warm_prefix  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402
from voxline.personas import load_persona  # noqa: E402


async def one_request(backend: LLMBackend, system: str, question: str, tools, max_tokens: int):
    """First-token seconds and decode tokens/s of one streamed reply."""
    started = time.perf_counter()
    first = None
    pieces = 0
    request = {
        "messages": [
            {"role": "system", "content": system},
            {"role": "system", "content": "Facts about this call:\nCall id: CA-benchmark"},
            {"role": "user", "content": question},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if tools:
        request["tools"] = tools
    async for chunk in backend.stream_chat(**request):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    first = first or ended
    rate = (pieces - 1) / (ended - first) if pieces > 1 and ended > first else 0.0
    return first - started, rate


async def evaluated_tokens(server: LlamaCppServer) -> float:
    queried, hit = await server.prefix_counters()
    return queried - hit


async def main(args: argparse.Namespace) -> None:
    persona = load_persona(args.persona)
    settings = EmbeddedLLMConfig()
    server = LlamaCppServer(resolve_llm_gguf(persona.llm.model), model_alias=persona.llm.model,
                            n_ctx=settings.n_ctx)  # fmt: skip
    endpoint = await server.start()
    backend = LLMBackend(endpoint, kind="llama_cpp", prefix_counter=server.prefix_counters)
    tools = openai_tools(persona)
    try:
        cold, warm, cold_rates, warm_rates, cold_eval, warm_eval = [], [], [], [], [], []
        for round_index in range(args.rounds):
            question = QUESTIONS[round_index % len(QUESTIONS)]
            preamble = f"Session {round_index} of the benchmark, on line {round_index * 7}.\n"
            before = await evaluated_tokens(server)
            seconds, rate = await one_request(
                backend, preamble + persona.system_prompt, question, tools, args.max_tokens
            )
            cold.append(seconds)
            cold_rates.append(rate)
            cold_eval.append(await evaluated_tokens(server) - before)
            print(f"cold {round_index + 1}: {seconds * 1000:.0f} ms, "
                  f"{cold_eval[-1]:.0f} tokens evaluated", flush=True)  # fmt: skip
        warm_up = await warm_prefix(endpoint, persona.system_prompt, tools=tools)
        print(f"persona prefix warmed once in {warm_up * 1000:.0f} ms")
        for round_index in range(args.rounds):
            question = QUESTIONS[round_index % len(QUESTIONS)]
            before = await evaluated_tokens(server)
            seconds, rate = await one_request(
                backend, persona.system_prompt, question, tools, args.max_tokens
            )
            warm.append(seconds)
            warm_rates.append(rate)
            warm_eval.append(await evaluated_tokens(server) - before)
            print(f"warm {round_index + 1}: {seconds * 1000:.0f} ms, "
                  f"{warm_eval[-1]:.0f} tokens evaluated", flush=True)  # fmt: skip
        print(f"persona {persona.name}: model {persona.llm.model}, {args.rounds} rounds")
        for name, times, rates, evaluated in (
            ("cold", cold, cold_rates, cold_eval),
            ("warm", warm, warm_rates, warm_eval),
        ):
            print(
                f"{name}: first token p50 {statistics.median(times) * 1000:.0f} ms, "
                f"p95 {percentile(times, 0.95) * 1000:.0f} ms; "
                f"{statistics.median(rates):.1f} tokens/s; "
                f"{statistics.median(evaluated):.0f} prompt tokens evaluated"
            )
        await backend.prefix_cache_counters()
        print(f"server prefix_cache_hit_ratio {backend.prefix_cache_hit_ratio:.2f}")
        print(f"ratio={statistics.median(cold) / statistics.median(warm):.1f}")
    finally:
        await backend.close()
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persona", type=Path, default=ROOT / "personas" / "bank_support.yaml")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    asyncio.run(main(parser.parse_args()))
