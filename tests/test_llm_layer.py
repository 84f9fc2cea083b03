"""The LLM layer against a real llama.cpp server: cached persona prefixes, the concurrency
cap, and a forced tool call whose Python handler's result flows into the next completion.
Plus the stream normalisation every server's output goes through."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import ROOT
from openai.types.chat import ChatCompletionChunk
from pipecat.frames.frames import TTSSpeakFrame, VADUserStartedSpeakingFrame
from pipecat.services.llm_service import FunctionCallParams
from pipelines import RunningPipeline
from speech import speech_16k

from voxline.bot.call_control import PipelineCallControl
from voxline.bot.runtime import Runtime
from voxline.bot.talk import talk
from voxline.bot.tool_wiring import openai_tools, persona_context, persona_prefix, register_tools
from voxline.engines.llm import LLMBusy
from voxline.personas import load_persona
from voxline.processors.llm import VoxlineLLMService
from voxline.processors.tool_call_stream import INVALID_ARGUMENTS, ToolCallStream

LEDGER_TOOL = """\
name: get_balance
description: Get the caller's account balance.
parameters:
  type: object
  properties:
    account: {type: string, enum: [checking, savings]}
python: ledger:get_balance
"""
LEDGER = """\
import json, os

def get_balance(account: str = "checking") -> dict:
    with open(os.environ["LEDGER_LOG"], "a") as log:
        log.write(json.dumps({"account": account}) + "\\n")
    return {"account": account, "balance": "1234.56", "currency": "USD"}
"""


def chunk(index: int | None = None, name: str | None = None, arguments: str | None = None,
          content: str | None = None) -> ChatCompletionChunk:  # fmt: skip
    delta: dict = {"role": "assistant"}
    if content is not None:
        delta["content"] = content
    if index is not None:
        delta["tool_calls"] = [
            {"index": index, "id": f"call_{index}", "type": "function",
             "function": {"name": name, "arguments": arguments}}
        ]  # fmt: skip
    return ChatCompletionChunk.model_validate(
        {"id": "c", "created": 0, "model": "m", "object": "chat.completion.chunk",
         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    )  # fmt: skip


class Chunks:
    def __init__(self, chunks: list[ChatCompletionChunk]):
        self.chunks = chunks
        self.closed = False

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        for item in self.chunks:
            yield item

    async def close(self) -> None:
        self.closed = True


async def read_calls(chunks: list[ChatCompletionChunk]) -> list[tuple[str, str]]:
    """Reassemble tool calls the way pipecat does: names and arguments joined per index."""
    released: list[bool] = []

    async def on_close() -> None:
        released.append(True)

    source = Chunks(chunks)
    stream = ToolCallStream(source, on_close=on_close)
    calls: dict[int, list[str]] = {}
    async for item in stream:
        for call in item.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, ["", ""])
            entry[0] += call.function.name or ""
            entry[1] += call.function.arguments or ""
    await stream.close()
    assert source.closed and released == [True]
    return [(name, arguments) for name, arguments in calls.values()]


async def test_repeated_names_are_given_once_and_arguments_whole():
    calls = await read_calls(
        [chunk(0, "end_call", '{"rea'), chunk(0, "end_call", 'son": 1}'), chunk(0, "end_call")]
    )
    assert calls == [("end_call", '{"reason": 1}')]


async def test_two_tool_calls_keep_their_own_arguments():
    calls = await read_calls(
        [chunk(0, "a", '{"x"'), chunk(0, None, ": 1}"), chunk(1, "b", "{}"), chunk(content="")]
    )
    assert calls == [("a", '{"x": 1}'), ("b", "{}")]


@pytest.mark.parametrize(
    ("arguments", "marker"),
    [('{"account": ', "not valid JSON"), ('"12345"', "not a JSON object"), ("", None)],
)
async def test_arguments_that_are_not_an_object_reach_the_handler_marked(arguments, marker):
    [(_name, repaired)] = await read_calls([chunk(0, "get_balance", arguments)])
    value = json.loads(repaired)
    if marker is None:
        assert value == {}
    else:
        assert marker in value[INVALID_ARGUMENTS]


@pytest.fixture
def tool_persona(tmp_path: Path, monkeypatch):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "get_balance.yaml").write_text(LEDGER_TOOL)
    (tools / "ledger.py").write_text(LEDGER)
    monkeypatch.setenv("LEDGER_LOG", str(tmp_path / "ledger.log"))
    text = (ROOT / "personas" / "bank_support.yaml").read_text()
    text = text.replace(
        "tools: [get_balance, list_recent_transactions, end_call]",
        "tools: [get_balance, end_call]\ntools_dir: tools",
    ).replace("llm:\n", "llm:\n  tool_choice: get_balance\n")
    path = tmp_path / "bank.yaml"
    path.write_text(text)
    return path


async def test_the_llm_counts_what_ends_a_callers_wait_and_stops_what_runs_beside_it():
    # A tool's filler is said only if nothing ended the caller's wait since the tool
    # started (a spoken line, the caller's voice); its timer must not outlive the call.
    llm = VoxlineLLMService(api_key="x", base_url="http://127.0.0.1:9/v1")
    running, stopped = asyncio.Event(), asyncio.Event()

    async def beside() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async with RunningPipeline([llm]) as run:
        mark = llm.activity
        llm.run_beside(beside())
        await asyncio.wait_for(running.wait(), 5)
        await run.queue(TTSSpeakFrame("One moment."))
        await run.queue(VADUserStartedSpeakingFrame())
    assert llm.activity == mark + 2
    assert stopped.is_set()


async def test_the_llm_hears_errors_for_unknown_tools_and_bad_arguments(tool_persona):
    persona = load_persona(tool_persona)
    llm = VoxlineLLMService(api_key="x", base_url="http://127.0.0.1:9/v1")
    register_tools(llm, persona, PipelineCallControl("Bye."))
    results: list[dict] = []

    async def result_callback(result, properties=None):
        results.append(result)

    async def call(name: str, arguments: dict) -> dict:
        handler = (llm._functions.get(name) or llm._functions[None]).handler
        await handler(
            FunctionCallParams(
                function_name=name, tool_call_id="1", arguments=arguments, llm=llm,
                context=persona_context(persona), result_callback=result_callback,
                pipeline_worker=None,
            )
        )  # fmt: skip
        return results[-1]

    assert "there is no tool 'launch_rocket'" in (await call("launch_rocket", {}))["error"]
    bad = await call("get_balance", {INVALID_ARGUMENTS: "not valid JSON: {"})
    assert bad == {"error": "invalid arguments for get_balance: not valid JSON: {"}
    # end_call takes no arguments: garbled ones still end the call, not an error to read out.
    ended = await call("end_call", {INVALID_ARGUMENTS: "not valid JSON: {reason"})
    assert ended == {"status": "ending the call"}
    enum = await call("get_balance", {"account": "crypto"})
    assert "account: 'crypto' is not one of ['checking', 'savings']" in enum["error"]
    assert (await call("get_balance", {"account": "savings"}))["result"]["balance"] == "1234.56"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime():
    async with Runtime() as shared:
        yield shared


def call_request(persona, facts: str, question: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": persona.system_prompt},
            {"role": "system", "content": facts},
            {"role": "user", "content": question},
        ],
        "tools": openai_tools(persona),
        "max_tokens": 4,
        "temperature": 0.0,
    }


async def complete(backend, request: dict) -> str:
    text = ""
    async for item in backend.stream_chat(**request):
        if item.choices and item.choices[0].delta.content:
            text += item.choices[0].delta.content
    return text


async def counters(backend) -> tuple[float, float]:
    found = await backend.prefix_cache_counters()
    assert found is not None
    return found


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_calls_of_a_persona_reuse_its_cached_prefix(runtime, tmp_path):
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    await runtime.prepare(persona)  # launches llama.cpp and warms the prefix
    backend = runtime.llm.backend(persona)
    warm_queried, _warm_hit = await counters(backend)
    assert warm_queried > 300, "the warm-up did not evaluate the persona's prefix"

    await complete(backend, call_request(persona, "Call id: CA1", "What is my balance?"))
    first_queried, first_hit = await counters(backend)
    await complete(backend, call_request(persona, "Call id: CA2", "Is the branch open today?"))
    second_queried, second_hit = await counters(backend)
    queried, evaluated = (
        second_queried - first_queried,
        (second_queried - first_queried) - (second_hit - first_hit),
    )
    print(f"\nsecond call: {queried:.0f} prompt tokens, {evaluated:.0f} evaluated")
    assert evaluated <= 40, "the second call recomputed the persona's prefix"
    assert backend.prefix_cache_hit_ratio is not None and backend.prefix_cache_hit_ratio > 0.5

    # An edited persona is a new prefix: it is warmed again at prepare, not by a caller.
    edited = tmp_path / "personas" / "bank.yaml"
    edited.parent.mkdir()
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    text = (ROOT / "personas" / "bank_support.yaml").read_text()
    edited.write_text(text.replace("You are Ava", "You are Maya"))
    changed = load_persona(edited)
    assert persona_prefix(changed).digest != persona_prefix(persona).digest
    before_queried, _before_hit = await counters(backend)
    await runtime.prepare(changed)
    after_queried, after_hit = await counters(backend)
    assert after_queried - before_queried > 100, "the edited persona was not re-warmed"
    await complete(backend, call_request(changed, "Call id: CA3", "Hello?"))
    final_queried, final_hit = await counters(backend)
    assert (final_queried - after_queried) - (final_hit - after_hit) <= 40


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_the_cap_queues_then_refuses(runtime):
    persona = load_persona(ROOT / "personas" / "bank_support.yaml")
    await runtime.prepare(persona)
    from voxline.engines.llm import LLMBackend

    shared = runtime.llm.backend(persona)
    backend = LLMBackend(shared.endpoint, max_concurrent=1, max_waiting=1)
    request = call_request(persona, "Call id: CA9", "Say hello.")
    first = asyncio.create_task(complete(backend, request))
    second = asyncio.create_task(complete(backend, request))
    while backend.cap.waiting < 1:
        await asyncio.sleep(0.01)
    with pytest.raises(LLMBusy, match="busy: 1 requests running and 1 waiting"):
        await complete(backend, request)
    await asyncio.gather(first, second)
    assert len(backend.cap.wait_secs) == 2 and max(backend.cap.wait_secs) > 0
    await backend.close()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_a_forced_tool_call_runs_the_handler_and_the_reply_uses_its_result(
    runtime, tool_persona, tmp_path
):
    persona = load_persona(tool_persona)
    result = await talk(persona, runtime, speech_16k("What is my balance?"), 16_000)
    ledger = (tmp_path / "ledger.log").read_text().splitlines()
    assert len(ledger) == 1, "the handler did not run exactly once"
    [turn] = result.turns
    print(f"\ncaller: {turn.caller_text}\ntools: {turn.tool_calls}\nbot: {turn.bot_text}")
    [call] = turn.tool_calls
    assert call["name"] == "get_balance"
    assert call["result"]["result"]["balance"] == "1234.56"
    assert turn.bot_text.strip(), "no completion followed the tool result"


async def test_a_stream_without_a_single_chunk_is_an_error_not_silence():
    from voxline.processors.tool_call_stream import EmptyCompletionError

    stream = ToolCallStream(Chunks([]))
    with pytest.raises(EmptyCompletionError, match="without a single chunk"):
        async for _ in stream:
            pass


@pytest.mark.parametrize(
    ("configured", "kind", "max_calls", "cap"),
    [
        (None, "vllm", 8, 8),  # one slot per call: vLLM batches them
        (None, "vllm", 2, 4),  # never under the cap the other servers get
        (None, "llama_cpp", 8, 4),  # one request at a time anyway
        (None, "external", 8, 4),  # its room is unknown
        (2, "vllm", 8, 2),  # a set cap is kept
    ],
)
def test_the_llm_clients_cap_follows_the_server_and_the_calls(configured, kind, max_calls, cap):
    from voxline.bot.llm_servers import concurrency_cap

    assert concurrency_cap(configured, kind, max_calls) == cap
