"""The browser side of the server: the demo page, the widget script and WebRTC signaling.

Thin routes over :class:`~voxline.server.webrtc_call.WebRTCLine`: each reads the
request, lets the line decide, and turns a refusal into a JSON error with the
right status (and CORS headers, so the page can show it).
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from loguru import logger
from pydantic import BaseModel, ValidationError

from voxline.config import ServerConfig
from voxline.server.webrtc_call import WebRTCLine
from voxline.transports.webrtc import (
    CandidatePatch,
    Offer,
    SignalingError,
    ice_servers_for_page,
)

WIDGET = files("voxline.transports") / "widget"
Message = TypeVar("Message", bound=BaseModel)


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def _cors(origin: str | None) -> dict[str, str]:
    if origin is None:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type",
        "Vary": "Origin",
    }


def _refusal(exc: SignalingError, origin: str | None) -> JSONResponse:
    logger.warning(f"webrtc signaling refused ({exc.status}): {exc}")
    # The page learns why, even from another origin, but gets nothing else.
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=_cors(origin))


async def _read_json(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise SignalingError(413, f"the offer is larger than {limit} bytes")
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise SignalingError(413, f"the offer is larger than {limit} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise SignalingError(400, "the body is not JSON") from None


async def _parse(request: Request, model: type[Message], limit: int) -> Message:
    """The request's JSON body as ``model``, or a 400/413 naming what is wrong."""
    document = await _read_json(request, limit)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise SignalingError(400, f"{where}: {first['msg']}") from None


def add_webrtc_routes(app: FastAPI, line: WebRTCLine, config: ServerConfig) -> None:
    """Mount the page, the widget and signaling on ``app``."""

    @app.get("/", response_class=HTMLResponse)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse((WIDGET / "index.html").read_text(encoding="utf-8"))

    @app.get("/widget.js")
    async def widget_script() -> Response:
        return Response(
            (WIDGET / "widget.js").read_text(encoding="utf-8"),
            media_type="application/javascript",
            headers={"Cache-Control": "no-cache"},
        )

    @app.get("/webrtc/config")
    async def ice_config(request: Request, key: str) -> Response:
        origin = request.headers.get("origin")
        try:
            # A page's same-origin GET carries no Origin; the answer is only the ICE servers.
            allowed = line.check_page(key, origin, _own_origin(request), require_origin=False)
        except SignalingError as exc:
            return _refusal(exc, origin)
        servers = ice_servers_for_page(config.webrtc.ice_servers)
        return JSONResponse({"ice_servers": servers}, headers=_cors(allowed))

    @app.options("/webrtc/offer")
    @app.options("/webrtc/config")
    async def preflight(request: Request) -> Response:
        origin = request.headers.get("origin")
        # The key is in the body: any listed origin may ask; the POST is checked again.
        if origin is not None and (origin in listed or "*" in listed):
            return Response(status_code=204, headers=_cors(origin))
        return Response(status_code=204)

    @app.post("/webrtc/offer")
    async def offer(request: Request) -> Response:
        origin = request.headers.get("origin")
        allowed = None
        try:
            parsed = await _parse(request, Offer, config.webrtc.max_sdp_bytes)
            allowed = line.check_page(parsed.key, origin, _own_origin(request))
            answer = await line.answer(parsed, _client(request))
        except SignalingError as exc:
            return _refusal(exc, allowed or origin if exc.status != 403 else None)
        return JSONResponse(answer, headers=_cors(allowed))

    listed = {o for widget in config.widgets.values() for o in widget.allowed_origins}

    @app.patch("/webrtc/offer")
    async def candidates(request: Request) -> Response:
        origin = request.headers.get("origin")
        allowed = None
        try:
            patch = await _parse(request, CandidatePatch, config.webrtc.max_sdp_bytes)
            allowed = line.check_page(patch.key, origin, _own_origin(request))
            await line.add_candidates(patch, _client(request))
        except SignalingError as exc:
            return _refusal(exc, allowed or origin if exc.status != 403 else None)
        return JSONResponse({"status": "ok"}, headers=_cors(allowed))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"
