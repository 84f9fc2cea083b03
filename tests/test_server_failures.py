"""A failing LLM server mid-call becomes the persona's apology; the call goes on.

The LLM here is a small OpenAI-compatible peer on loopback that answers the
health check and the prompt warm-up, then fails every streamed completion with
HTTP 500, as a crashing or overloaded server would.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from aiohttp import web

from tests.speech import caller_voice, wer
from voxline.bot.runtime import Runtime
from voxline.bot.talk import talk
from voxline.engines.llm import free_port
from voxline.engines.whisper import SAMPLE_RATE
from voxline.personas import Persona

APOLOGY = "Sorry, something went wrong on my side. Please ask me again."


async def failing_llm() -> tuple[web.AppRunner, str, list[str]]:
    requests: list[str] = []

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smollm2"}]})

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        requests.append("stream" if body.get("stream") else "warm-up")
        if body.get("stream"):
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        return web.json_response(
            {
                "id": "warm", "object": "chat.completion", "model": "smollm2",
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "Hi"}}],
            }
        )  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", requests


@pytest.mark.slow
async def test_llm_failing_mid_call_is_heard_as_the_apology():
    runner, url, requests = await failing_llm()
    persona = Persona(
        name="fragile",
        prompt="You are a helpful assistant.",
        llm={"base_url": url, "model": "smollm2"},
        phrases={"apology": APOLOGY},
    )
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all("What time do you open tomorrow?"), dtype=np.int16)
    try:
        async with Runtime() as runtime:
            result = await talk(
                persona, runtime, pcm.astype(np.float32) / 32768.0, voice.sample_rate, timeout=60
            )
            heard_audio = soxr.resample(
                result.audio.astype(np.float32) / 32768.0, result.sample_rate, SAMPLE_RATE
            ).astype(np.float32)
            heard = (await runtime.whisper(persona).transcribe(heard_audio)).text
    finally:
        await runner.cleanup()
    assert "stream" in requests, requests
    [turn] = result.turns
    assert turn.error is not None and "500" in turn.error
    assert turn.bot_text == ""
    assert wer(APOLOGY, heard) <= 0.35, heard
