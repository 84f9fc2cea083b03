"""First tokens over consecutive calls on one embedded llama.cpp server, and its memory.

Starts the embedded server as ``voxline talk`` does (SmolLM2-135M, the prompt cache sized
for 5 conversations), warms the bank persona's prefix, then plays --calls calls one
after another: each has its own facts (caller number) and the same four caller turns,
each turn streamed with the persona's tools, the reply put back into the conversation.
Prints every call's first-token times, then the median and p95 of first turns and of
later turns, the last calls' median against the first calls' (the trend over calls),
and the server's RSS. ``--logits-all`` starts the server the library's way (every prompt
token's logits kept), to compare in the same run: ``--compare`` runs both.

    .venv/bin/python benchmarks/llm_consecutive.py --calls 8 --compare
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from voxline.bot.tool_wiring import call_facts, openai_tools  # noqa: E402
from voxline.engines.llm import (  # noqa: E402
    LlamaCppServer,
    LLMBackend,
    prompt_cache_bytes,
    warm_prefix,
)
from voxline.models import resolve_llm_gguf  # noqa: E402
from voxline.personas import load_persona  # noqa: E402

TURNS = [
    "What's my balance?",
    "Can you move two hundred dollars to savings?",
    "Thanks. And when does the branch open?",
    "Okay, goodbye.",
]


class LibraryDefaultLogits(LlamaCppServer):
    """The server as the library starts it: every prompt token's logits kept."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--logits_all")
        return command[:at] + command[at + 2 :]


async def first_token(backend: LLMBackend, messages: list[dict], tools: list[dict]) -> tuple:
    """Seconds to the first streamed content or tool call, and the reply's text."""
    started = time.perf_counter()
    first = None
    text = ""
    async for chunk in backend.stream_chat(
        messages=messages, tools=tools, max_tokens=60, temperature=0.0
    ):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if first is None and (delta.content or delta.tool_calls):
            first = time.perf_counter() - started
        text += delta.content or ""
    return (first if first is not None else time.perf_counter() - started), text


async def run(calls: int, logits_all: bool) -> dict:
    """One server, ``calls`` calls in a row; returns first-token times and the RSS."""
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    tools = openai_tools(persona)
    gguf = resolve_llm_gguf("smollm2")
    kind = LibraryDefaultLogits if logits_all else LlamaCppServer
    server = kind(gguf, n_threads=2, prompt_cache_bytes=prompt_cache_bytes(gguf, 5))
    endpoint = await server.start()
    backend = LLMBackend(endpoint)
    rows: list[list[float]] = []
    try:
        await warm_prefix(endpoint, persona.system_prompt, tools=tools)
        for call in range(calls):
            facts = call_facts(persona, {"caller_number": f"+1555020{call:04d}"})
            messages = [
                {"role": "system", "content": persona.system_prompt},
                {"role": "system", "content": facts},
            ]
            row = []
            for turn in TURNS:
                messages.append({"role": "user", "content": turn})
                seconds, text = await first_token(backend, messages, tools)
                row.append(seconds * 1000)
                messages.append({"role": "assistant", "content": text or "Okay."})
            rows.append(row)
            print(f"  call {call}: first tokens " + " ".join(f"{ms:.0f}" for ms in row) + " ms")
        assert server.pid is not None
        rss = psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        await backend.close()
        await server.stop()
    return {"rows": rows, "rss": rss}


def summary(name: str, result: dict) -> str:
    rows = result["rows"]
    firsts = [row[0] for row in rows]
    later = [ms for row in rows for ms in row[1:]]
    half = max(1, len(rows) // 2)
    early = statistics.median(ms for row in rows[:half] for ms in row)
    late = statistics.median(ms for row in rows[-half:] for ms in row)
    return (
        f"{name}: first turn p50={statistics.median(firsts):.0f}ms "
        f"later turns p50={statistics.median(later):.0f}ms p95={percentile(later, 95):.0f}ms "
        f"max={max(later):.0f}ms | last/first calls={late / early:.2f} | "
        f"server RSS={result['rss']:.0f}MB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--logits-all", action="store_true", help="the library's default")
    parser.add_argument("--compare", action="store_true", help="voxline's way, then the default")
    args = parser.parse_args()
    modes = [False, True] if args.compare else [args.logits_all]
    lines = []
    for logits_all in modes:
        name = "logits_all=True (library)" if logits_all else "logits_all=False (voxline)"
        print(name)
        lines.append(summary(name, await run(args.calls, logits_all)))
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
