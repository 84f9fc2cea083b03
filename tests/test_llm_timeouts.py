"""A completion that hangs is abandoned in time: the caller hears the apology, the call goes on.

The LLM is a small OpenAI-compatible peer on loopback. It answers the health check
and the prompt warm-up, then treats each streamed completion by the caller's words:
a question about opening hours is accepted and never answered (no headers, no
bytes); a question about a branch gets its headers and a first token, then nothing
more; a question about gift cards gets a first token, then the connection drops (a
server that crashes mid-reply); any other question is answered in full. One call
asks all four in turn.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import soxr
from aiohttp import web

from tests.speech import caller_voice, normalize
from voxline.bot.runtime import Runtime
from voxline.bot.talk import talk
from voxline.engines.llm import free_port
from voxline.engines.whisper import SAMPLE_RATE
from voxline.personas import Persona

APOLOGY = "Sorry, something went wrong on my side. Please ask me again."
ANSWER = "Yes, we take every card."


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    body = {
        "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "smollm2",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


class StallingLLM:
    """Hangs, stalls or answers each streamed completion by the caller's last words."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()
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
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smollm2"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):  # the prompt warm-up
            return web.json_response(
                {
                    "id": "warm", "object": "chat.completion", "created": 0, "model": "smollm2",
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "Hi"}}],
                }
            )  # fmt: skip
        words = normalize(str(body["messages"][-1].get("content", "")))
        if "open" in words:
            self.seen.append("hang")
            await self.release.wait()  # accepted, never answered
            return web.Response(status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if "branch" in words:
            self.seen.append("stall")
            await response.write(_chunk("Let me"))
            await self.release.wait()  # a first token, then nothing
            return response
        if "gift" in words:
            self.seen.append("crash")
            await response.write(_chunk("Well"))
            assert request.transport is not None
            request.transport.abort()  # the server died mid-reply
            return response
        self.seen.append("answer")
        for word in ANSWER.split(" "):
            await response.write(_chunk(word + " "))
        await response.write(_chunk(None, finish="stop"))
        await response.write(b"data: [DONE]\n\n")
        return response


def _speech(text: str, silence_after: float) -> np.ndarray:
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(text), dtype=np.int16).astype(np.float32) / 32768.0
    return np.concatenate([pcm, np.zeros(int(silence_after * voice.sample_rate), np.float32)])


def _segments(frames: list[tuple[float, float]], gap: float = 0.7) -> list[tuple[float, float]]:
    """Stretches of bot audio separated by at least ``gap`` seconds of silence."""
    segments: list[list[float]] = []
    for start, duration in frames:
        if segments and start - segments[-1][1] < gap:
            segments[-1][1] = start + duration
        else:
            segments.append([start, start + duration])
    return [(start, end) for start, end in segments]


@pytest.mark.slow
async def test_a_hung_stalled_or_dropped_completion_is_the_apology_and_the_call_goes_on():
    llm = StallingLLM()
    await llm.start()
    persona = Persona(
        name="patient",
        prompt="You are a helpful assistant.",
        llm={
            "base_url": llm.url,
            "model": "smollm2",
            "first_token_timeout_secs": 2.0,
            "total_timeout_secs": 4.0,
        },
        phrases={"apology": APOLOGY},
    )
    clip = np.concatenate(
        [
            _speech("What time do you open tomorrow?", 9.0),
            _speech("Where is the nearest branch?", 11.0),
            _speech("Do you sell gift cards?", 8.0),
            _speech("Can I pay with a card?", 0.5),
        ]
    )
    try:
        async with Runtime() as runtime:
            result = await talk(persona, runtime, clip, caller_voice().sample_rate, timeout=40)
            whisper = runtime.whisper(persona)
            audio = result.audio.astype(np.float32) / 32768.0
            heard = []
            for start, end in _segments(result.bot_frames):
                piece = audio[int(start * result.sample_rate) : int(end * result.sample_rate)]
                piece = soxr.resample(piece, result.sample_rate, SAMPLE_RATE).astype(np.float32)
                heard.append(normalize((await whisper.transcribe(piece)).text))
    finally:
        await llm.stop()

    assert {"hang", "stall", "crash", "answer"} <= set(llm.seen), llm.seen
    turns = [turn for turn in result.turns if turn.caller_text]
    errors = [turn.error or "" for turn in turns]
    assert any("no first token within 2 s" in error for error in errors), errors
    assert any("did not finish within 4 s" in error for error in errors), errors
    assert sum(bool(error) for error in errors) == 3, errors
    last = turns[-1]
    assert last.error is None and normalize(ANSWER) in normalize(last.bot_text), last.as_dict()
    # The caller heard three apologies (one per failed completion) and then the answer.
    apologies = [text for text in heard if "went wrong" in text]
    assert len(apologies) == 3, heard
    after = heard[len(heard) - heard[::-1].index(apologies[-1]) :]
    assert any("every card" in text for text in after), heard
