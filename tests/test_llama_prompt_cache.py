"""The embedded llama.cpp server's RAM prompt cache stays the size the personas need.

The library's default cache (2 GiB of KV states, plus an uncounted copy of logits beside
each) grew the server past 1.7 GB for a 135 M model; voxline sizes it from the model's
GGUF header, the personas and ``max_calls``, and keeps only the last token's logits.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from voxline.bot.tool_wiring import call_facts, openai_tools
from voxline.engines.gguf_info import GGUFError, gguf_numbers, kv_bytes_per_token
from voxline.engines.llm import PROMPT_CACHE_TOKENS, LlamaCppServer, prompt_cache_bytes
from voxline.models import resolve_llm_gguf
from voxline.personas.loader import load_persona

ROOT = Path(__file__).resolve().parent.parent

SYSTEM = "You are the phone assistant of a bank. Answer in one short sentence. " * 12


def test_the_kv_size_of_a_token_comes_from_the_gguf_header():
    gguf = resolve_llm_gguf("smollm2")
    numbers = gguf_numbers(gguf)
    assert numbers["model.block_count"] == 30 and numbers["model.attention.head_count_kv"] == 3
    # SmolLM2-135M: 30 layers x (keys + values) x 3 KV heads x 64 dims x 2 bytes (f16).
    assert kv_bytes_per_token(gguf) == 30 * 2 * 3 * 64 * 2
    assert prompt_cache_bytes(gguf, 5) == 5 * PROMPT_CACHE_TOKENS * 23040


@pytest.mark.parametrize("content", [b"", b"not a model", b"GGUF\x03\x00\x00\x00\x01"])
def test_a_file_that_is_not_a_gguf_model_is_named(tmp_path: Path, content: bytes):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(GGUFError, match=r"model\.gguf|header"):
        kv_bytes_per_token(bad)


@pytest.mark.asyncio
async def test_the_prompt_cache_keeps_the_server_small_and_still_serves_the_prefix():
    gguf = resolve_llm_gguf("smollm2")
    server = LlamaCppServer(gguf, n_threads=2, prompt_cache_bytes=prompt_cache_bytes(gguf, 2))
    endpoint = await server.start()
    try:
        async with httpx.AsyncClient(timeout=60) as client:

            async def ask(caller: int) -> None:
                body = {
                    "model": endpoint.model,
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"Caller {caller * 7919}: my balance?"},
                    ],
                    "max_tokens": 4,
                    "temperature": 0,
                }
                response = await client.post(endpoint.api_url + "/chat/completions", json=body)
                response.raise_for_status()

            await ask(0)
            assert server.pid is not None
            process = psutil.Process(server.pid)
            after_first = process.memory_info().rss
            for caller in range(1, 11):
                await ask(caller)
            after_ten = process.memory_info().rss
            for caller in range(11, 31):
                await ask(caller)
            after_thirty = process.memory_info().rss
            cached_before = server.prompt_tokens_cached
            await ask(99)
            hit = server.prompt_tokens_cached - cached_before
    finally:
        await server.stop()
    grown = [(rss - after_first) / 2**20 for rss in (after_ten, after_thirty)]
    print(f"server RSS grew {grown[0]:.0f} MB after 10 prompts, {grown[1]:.0f} MB after 30")
    # With the library's defaults it grew ~44 MB a prompt, without end (1.3 GB after 30).
    assert grown[1] - grown[0] < 100, grown
    assert grown[1] < 600, grown
    assert hit > 100  # the system prompt is still served from the cache


@pytest.mark.asyncio
async def test_calls_of_several_turns_with_tools_keep_the_server_small():
    """Each cached state once held every prompt token's logits (200 KB a token with
    SmolLM2's vocabulary): five four-turn calls with the bank persona's tools put the
    server at ~1.5 GB, and restoring a state took 0.3-0.8 s of the next reply's first token.
    """
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    tools = openai_tools(persona)
    gguf = resolve_llm_gguf("smollm2")
    server = LlamaCppServer(gguf, n_threads=2, prompt_cache_bytes=prompt_cache_bytes(gguf, 5))
    endpoint = await server.start()
    turns = ["What's my balance?", "Move two hundred dollars to savings.", "Goodbye."]
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            for call in range(5):
                facts = call_facts(persona, {"caller_number": f"+1555010{call:04d}"})
                messages = [
                    {"role": "system", "content": persona.system_prompt},
                    {"role": "system", "content": facts},
                ]
                for turn in turns:
                    messages.append({"role": "user", "content": turn})
                    body = {
                        "model": endpoint.model,
                        "messages": messages,
                        "tools": tools,
                        "max_tokens": 30,
                        "temperature": 0,
                    }
                    response = await client.post(endpoint.api_url + "/chat/completions", json=body)
                    response.raise_for_status()
                    reply = response.json()["choices"][0]["message"].get("content") or "Okay."
                    messages.append({"role": "assistant", "content": reply})
            assert server.pid is not None
            rss = psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        await server.stop()
    print(f"llama.cpp server RSS after 5 calls of 3 turns: {rss:.0f} MB")
    assert rss < 800, rss
