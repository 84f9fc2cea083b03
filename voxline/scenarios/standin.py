"""HTTP stand-ins: local servers that answer for a tool's real API during a test run.

An HTTP tool (``http: url: ${RESTAURANT_API_URL}/bookings``) then runs its real
handler, request and all, against 127.0.0.1 instead of a production system. Each
stand-in answers its routes with the status and JSON body the scenario file
gives, keeps every request it received, and its base URL goes into the
environment variable the tool's URL names for the length of the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from voxline.scenarios.spec import StandIn

MAX_REQUESTS_KEPT = 1000


@dataclass
class Received:
    """One request a stand-in answered."""

    method: str
    path: str
    body: Any


@dataclass
class StandInServer:
    """A running stand-in: where it listens and what it received."""

    env: str
    url: str
    runner: web.AppRunner
    received: list[Received] = field(default_factory=list)


async def start_stand_ins(stand_ins: list[StandIn]) -> list[StandInServer]:
    """Start one server per environment variable (routes of the same variable merged),
    each on a free port of 127.0.0.1, and set the variables to their URLs."""
    merged: dict[str, dict[tuple[str, str], tuple[int, Any]]] = {}
    for stand_in in stand_ins:
        routes = merged.setdefault(stand_in.env, {})
        for route in stand_in.routes:
            routes[(route.method, route.path)] = (route.status, route.json_body)
    servers: list[StandInServer] = []
    try:
        for env, routes in merged.items():
            servers.append(await _start(env, routes))
    except BaseException:
        await stop_stand_ins(servers)
        raise
    return servers


async def _start(env: str, routes: dict[tuple[str, str], tuple[int, Any]]) -> StandInServer:
    received: list[Received] = []

    async def answer(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        if len(received) < MAX_REQUESTS_KEPT:
            received.append(Received(request.method, request.path, body))
        found = routes.get((request.method, request.path))
        if found is None:
            return web.json_response({"error": "no such route on the stand-in"}, status=404)
        status, payload = found
        return web.json_response(payload, status=status)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    os.environ[env] = url
    return StandInServer(env=env, url=url, runner=runner, received=received)


async def stop_stand_ins(servers: list[StandInServer]) -> None:
    """Stop the servers and take their variables out of the environment."""
    for server in servers:
        os.environ.pop(server.env, None)
        await server.runner.cleanup()
