"""Every request of a persona's calls starts with the same bytes, built without pipecat's
deprecated context system message.

The persona's prompt is the LLM service's ``system_instruction``; the call's facts follow it
as a second system message, then the conversation. The warm-ups (the persona's prefix when
it loads, the call's facts and greeting when the call starts, the caller's words while they
speak) send what the call's own requests start with, so the server's prefix cache serves
them.

pipecat's deprecation warnings are raised under ``warnings.simplefilter("always")`` of its
own, which overrides ``-W error::DeprecationWarning``: the tests record warnings instead and
assert that none was raised.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from aiohttp import web

from tests.speech import caller_voice
from voxline.bot.runtime import Runtime
from voxline.bot.talk import talk
from voxline.bot.tool_wiring import call_prefix, openai_tools, persona_context
from voxline.engines.llm import free_port
from voxline.personas import Persona
from voxline.processors.llm import VoxlineLLMService

PROMPT = "You are Kim, the phone assistant of a small test shop.\nAnswer in one short sentence."
GREETING = "Hello, this is the test shop."
FACTS = {"Caller number": "+15550100999", "Call id": "CA-prefix-test"}
REPLY = "We open at nine."


def make_persona(base_url: str = "http://127.0.0.1:9") -> Persona:
    return Persona(
        name="prefix_test",
        prompt=PROMPT,
        greeting=GREETING,
        tools=["end_call"],
        llm={"base_url": base_url, "model": "smollm2"},
    )


@contextmanager
def deprecations() -> Iterator[list[warnings.WarningMessage]]:
    """Every DeprecationWarning raised in the block, however it was filtered."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found: list[warnings.WarningMessage] = []
        yield found
    found.extend(w for w in caught if issubclass(w.category, DeprecationWarning))


def service(persona: Persona) -> VoxlineLLMService:
    return VoxlineLLMService(
        api_key="not-needed",
        base_url="http://127.0.0.1:9/v1",
        # As the call's session builds it: the persona's prompt is the system instruction.
        settings=VoxlineLLMService.Settings(
            model="smollm2", system_instruction=persona.system_prompt
        ),
    )


@pytest.mark.filterwarnings("error::DeprecationWarning")
async def test_a_call_request_starts_with_the_prompt_then_the_facts_without_deprecations():
    persona = make_persona()
    with deprecations() as found:
        llm = service(persona)
        context = persona_context(persona, FACTS)
        context.add_message({"role": "user", "content": "When do you open?"})
        request = await llm.chat_request(context)
        warm = await llm.chat_request(call_prefix(persona, persona_context(persona, FACTS)))
    assert not found, [str(w.message) for w in found]

    facts = "Facts about this call:\nCaller number: +15550100999\nCall id: CA-prefix-test"
    assert request["messages"] == [
        {"role": "system", "content": PROMPT},
        {"role": "system", "content": facts},
        {"role": "user", "content": "When do you open?"},
    ]
    assert warm["messages"] == [
        {"role": "system", "content": PROMPT},
        {"role": "system", "content": facts},
        {"role": "assistant", "content": GREETING},
    ]
    assert request["tools"] == warm["tools"] == openai_tools(persona)
    # The context the call keeps holds the conversation, not the persona's prompt.
    assert all(m.get("content") != PROMPT for m in context.get_messages())


class RecordingLLM:
    """An OpenAI-compatible peer on loopback that keeps every chat request's body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.completions)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smollm2"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        if not json.loads(raw).get("stream"):  # a warm-up
            return web.json_response(
                {
                    "id": "warm", "object": "chat.completion", "created": 0, "model": "smollm2",
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "Hi"}}],
                }
            )  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece, finish in [(REPLY, None), (None, "stop")]:
            delta = {"role": "assistant", "content": piece} if piece else {}
            chunk = {
                "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "smollm2",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


def encoded(messages: list[dict]) -> list[bytes]:
    """Each message as the server reads it: its role and its content, as UTF-8 bytes."""
    return [f"{m['role']}\n{m['content']}".encode() for m in messages]


@pytest.mark.slow
async def test_the_warm_ups_send_a_byte_identical_prefix_of_the_calls_requests():
    llm = RecordingLLM()
    await llm.start()
    persona = make_persona(llm.url)
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all("When do you open tomorrow?"), dtype=np.int16)
    clip = np.concatenate([pcm.astype(np.float32) / 32768.0, np.zeros(voice.sample_rate)])
    try:
        with deprecations() as found:
            async with Runtime() as runtime:
                result = await talk(
                    persona, runtime, clip, voice.sample_rate, timeout=40, facts=FACTS
                )
    finally:
        await llm.stop()
    assert not found, [f"{w.filename}:{w.lineno}: {w.message}" for w in found]
    assert any(REPLY in turn.bot_text for turn in result.turns), result.turns

    requests = [json.loads(raw) for raw in llm.bodies]
    warm_prefix, warm_call, *rest = requests
    assert not warm_prefix.get("stream") and not warm_call.get("stream"), requests
    turns = [request for request in rest if request.get("stream")]
    # The caller's words so far, sent while they spoke (the server was idle): one-token
    # requests before the turn's own (voxline/processors/turn_prefill.py).
    prefills = rest[: rest.index(turns[0])] if turns else rest
    assert turns and all(turn.get("stream") for turn in rest[len(prefills) :]), requests
    assert prefills, "the caller's words went to the server only after their pause"
    call = encoded(turns[0]["messages"])

    # The persona's prefix: the prompt first, then the tools, in every request.
    for request in requests:
        assert encoded(request["messages"])[0] == f"system\n{PROMPT}".encode()
        assert request["tools"] == openai_tools(persona), request
    # The call's warm-up (prompt, facts, greeting) is what the call's requests start with.
    warmed = encoded(warm_call["messages"])
    assert len(warmed) == 3 and warmed[1].startswith(b"system\nFacts about this call:\n")
    assert b"Caller number: +15550100999" in warmed[1]
    assert warmed[2] == f"assistant\n{GREETING}".encode()
    for turn in turns:
        assert encoded(turn["messages"])[: len(warmed)] == warmed
    assert call[len(warmed)].startswith(b"user\n"), call
    # A prefill is the turn's request but for its last words: the same bytes up to the
    # caller's message, which begins as the turn's does.
    for prefill in prefills:
        sent = encoded(prefill["messages"])
        assert sent[:-1] == call[:-1] and sent[-1].startswith(b"user\n"), sent
        first_word = prefill["messages"][-1]["content"].split()[0]
        assert first_word == turns[0]["messages"][-1]["content"].split()[0], prefill


async def test_a_forced_tool_call_gets_room_for_its_arguments_the_spoken_reply_does_not():
    persona = Persona(
        name="forced_tool",
        prompt=PROMPT,
        tools=["end_call"],
        llm={"base_url": "http://127.0.0.1:9", "model": "smollm2", "tool_choice": "end_call"},
    )
    llm = VoxlineLLMService(
        api_key="not-needed",
        base_url="http://127.0.0.1:9/v1",
        tool_call_max_tokens=persona.llm.tool_call_max_tokens,
        settings=VoxlineLLMService.Settings(
            model="smollm2", system_instruction=PROMPT, max_tokens=48
        ),
    )
    context = persona_context(persona, FACTS)
    context.add_message({"role": "user", "content": "Goodbye."})
    forced = await llm.chat_request(context)
    assert forced["tool_choice"]["function"]["name"] == "end_call"
    assert forced["max_tokens"] == persona.llm.tool_call_max_tokens == 128
    # After the tool's result the completion speaks: the persona's limit holds again.
    context.add_message(
        {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function",
         "function": {"name": "end_call", "arguments": "{}"}}]}
    )  # fmt: skip
    context.add_message({"role": "tool", "tool_call_id": "1", "content": '{"status": "ok"}'})
    spoken = await llm.chat_request(context)
    assert spoken["tool_choice"] == "none" and spoken["max_tokens"] == 48
