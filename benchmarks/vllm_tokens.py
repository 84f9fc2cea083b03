"""vLLM on a CPU, eager vs compiled: start-up, first token and time per token.

vLLM's CPU build runs the model eagerly (``--enforce-eager``, voxline's default) or
compiles it with torch.compile (``engines.vllm.cpu_compile: true``). This starts the
packaged SmolLM2 checkpoint both ways, one server after the other, with the OpenMP
threads ``voxline serve`` gives it on this machine (the CPU budget, docs/cpu.md;
``--threads`` to choose), warms the bank persona's prompt with its tools, then streams
caller questions as a call's first turn asks them (the persona's prompt, facts no
earlier request had, the question; its tools; temperature 0; ``--max-tokens``), one at
a time and ``--concurrent`` at once. Prints per way the start-up time (a compiled start
reuses vLLM's compile cache in ``~/.cache/vllm`` after the first), the server's RSS
after the questions, first token p50 / p95 and milliseconds per later token p50 / p95,
then compiled / eager ratios; llama.cpp on the same requests is the reference.

    .venv/bin/python -m benchmarks.vllm_tokens
    .venv/bin/python -m benchmarks.vllm_tokens --threads 2 --concurrent 8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import QUESTIONS, p95, timed_answer  # noqa: E402
from voxline.bench.stack_usage import StackUsage  # noqa: E402
from voxline.bot.llm_servers import vllm_server  # noqa: E402
from voxline.bot.tool_wiring import openai_tools  # noqa: E402
from voxline.config import ServerConfig  # noqa: E402
from voxline.engines.llm import LlamaCppServer, LLMBackend, warm_prefix  # noqa: E402
from voxline.engines.server_process import SupervisedServer  # noqa: E402
from voxline.engines.vllm import kv_cache_bytes, prepare_vllm_model  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402
from voxline.personas import Persona, load_persona  # noqa: E402

PERSONA = ROOT / "personas" / "bank_support.yaml"
_calls = itertools.count(1)


async def answer(
    backend: LLMBackend, persona: Persona, question: str, max_tokens: int
) -> tuple[float, float]:
    """First token (ms) and milliseconds per later token of a call's first answer."""
    call = next(_calls)
    facts = f"Facts about this call:\nCall id: CA{call:032d}\nCaller number: +1555{call:07d}"
    request = {
        "messages": [
            {"role": "system", "content": persona.system_prompt},
            {"role": "system", "content": facts},
            {"role": "user", "content": question},
        ],
        "tools": openai_tools(persona),
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    return await timed_answer(backend, request)


async def measure(
    name: str, server: SupervisedServer, persona: Persona, args: argparse.Namespace
) -> dict[str, float]:
    """Start ``server``, answer the questions alone and at once; its figures."""
    began = time.perf_counter()
    endpoint = await server.start()
    started = time.perf_counter() - began
    backend = LLMBackend(endpoint, max_concurrent=args.concurrent, max_waiting=args.concurrent)
    n = args.concurrent
    try:
        await warm_prefix(endpoint, persona.system_prompt, tools=openai_tools(persona))
        questions = itertools.cycle(QUESTIONS)
        alone = [
            await answer(backend, persona, next(questions), args.max_tokens)
            for _ in range(args.rounds * n)
        ]
        together: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            batch = [answer(backend, persona, next(questions), args.max_tokens) for _ in range(n)]
            together += await asyncio.gather(*batch)
        assert server.pid is not None
        rss = StackUsage([server.pid]).sample()
    finally:
        await backend.close()
        await server.stop()
    figures = {"start": started, "rss": rss}
    for label, results in (("1", alone), (str(n), together)):
        firsts = [first for first, _ in results]
        rates = [rate for _, rate in results if rate == rate]
        figures[f"first{label}"] = statistics.median(firsts)
        figures[f"first{label}_p95"] = p95(firsts)
        figures[f"token{label}"] = statistics.median(rates)
        figures[f"token{label}_p95"] = p95(rates)
    print(
        f"{name:13} start {started:5.1f} s, RSS {rss:5.0f} MB | alone: first token p50/p95 "
        f"{figures['first1']:4.0f}/{figures['first1_p95']:4.0f} ms, ms/token "
        f"{figures['token1']:5.1f}/{figures['token1_p95']:5.1f} | {n} at once: first token "
        f"{figures[f'first{n}']:4.0f}/{figures[f'first{n}_p95']:4.0f} ms, ms/token "
        f"{figures[f'token{n}']:5.1f}/{figures[f'token{n}_p95']:5.1f}",
        flush=True,
    )
    return figures


async def main(args: argparse.Namespace) -> None:
    persona = load_persona(PERSONA)
    gguf = resolve_llm_gguf(persona.llm.model)
    settings = ServerConfig().engines.vllm  # as voxline serve runs it on this machine
    if args.threads:
        settings = settings.model_copy(update={"cpu_threads": args.threads})
    threads = settings.cpu_threads
    model = await prepare_vllm_model(
        persona.llm.model, settings.python, gguf, checkpoint_dir=settings.checkpoint_dir
    )
    kv_cache = kv_cache_bytes(model, 1 + args.concurrent, settings.max_model_len)
    print(f"vLLM OpenMP threads: {threads}; llama.cpp threads: {threads}")
    results: dict[str, dict[str, float]] = {}
    for name, compiled in (("vLLM eager", False), ("vLLM compiled", True)):
        way = settings.model_copy(update={"cpu_compile": compiled, "startup_timeout_secs": 600})
        server = vllm_server(model, way, model_alias=persona.llm.model, kv_cache=kv_cache)
        results[name] = await measure(name, server, persona, args)
    if not args.no_llama_cpp:
        reference = LlamaCppServer(gguf, model_alias=persona.llm.model, n_threads=threads)
        await measure("llama.cpp", reference, persona, args)
    eager, compiled = results["vLLM eager"], results["vLLM compiled"]
    n = args.concurrent
    print(
        f"vllm_tokens compiled/eager ({threads} threads): start "
        f"{compiled['start'] / eager['start']:.2f}, RSS {compiled['rss'] / eager['rss']:.2f}, "
        f"first token {compiled['first1'] / eager['first1']:.2f}, ms/token alone "
        f"{compiled['token1'] / eager['token1']:.2f}, {n} at once "
        f"{compiled[f'token{n}'] / eager[f'token{n}']:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="default: what voxline serve gives it")
    parser.add_argument("--concurrent", type=int, default=4, help="streams at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the reference")
    asyncio.run(main(parser.parse_args()))
