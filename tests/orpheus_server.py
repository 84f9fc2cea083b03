"""A streaming ``/v1/completions`` server on loopback that replays an Orpheus token sequence.

A protocol peer of vLLM serving Orpheus, for tests only: it streams server-sent
events whose text is ``<custom_token_N>`` tokens at a set rate, records when it
sent each token, and notices when the client goes away (the server would stop
generating). Modes make it fail the ways a real server can.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from voxline.engines.llm import free_port


@dataclass
class Replay:
    """What the server streams and what it saw."""

    tokens: list[int]
    tokens_per_sec: float = 200.0
    mode: str = "ok"  # ok | http_error | close_mid | not_json
    first_token_delay: float = 0.0  # a busy server: the request waits before generating
    sent_at: list[float] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class OrpheusReplayServer:
    """Serves :class:`Replay` on 127.0.0.1; start and stop it in the test's event loop."""

    def __init__(self, replay: Replay):
        self.replay = replay
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app)

    async def start(self) -> OrpheusReplayServer:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "orpheus"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        replay = self.replay
        replay.requests.append(await request.json())
        if replay.mode == "http_error":
            return web.Response(status=500, text="CUDA out of memory")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interval = 1.0 / replay.tokens_per_sec
        try:
            await asyncio.sleep(replay.first_token_delay)
            for index, number in enumerate(replay.tokens):
                if replay.mode == "close_mid" and index == len(replay.tokens) // 2:
                    request.transport.close()  # the server dies mid-stream
                    return response
                event = {"choices": [{"index": 0, "text": f"<custom_token_{number}>"}]}
                payload = "not json" if replay.mode == "not_json" else json.dumps(event)
                await response.write(f"data: {payload}\n\n".encode())
                replay.sent_at.append(time.perf_counter())
                await asyncio.sleep(interval)  # the model's generation rate
            await response.write(b"data: [DONE]\n\n")
            replay.finished.set()
        except ConnectionResetError:
            replay.client_gone.set()  # the client closed the stream: stop generating
        except asyncio.CancelledError:
            replay.client_gone.set()
            raise
        return response
