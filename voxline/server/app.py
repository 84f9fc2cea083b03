"""The voxline server: FastAPI routes over plain functions, one Runtime for all calls.

POST /twilio/voice     Twilio voice webhook (signed) -> TwiML <Connect><Stream>
WS   /twilio/stream/{instance}  Twilio media stream: one call (the URL names the process
                       that answered the webhook; plain /twilio/stream is taken too)
GET  /health/live      the process is up (liveness: restart it if this fails)
GET  /health/ready     it can take a call now: started, not draining, below max_calls,
                       and every LLM and TTS server answers (checked in the background)
GET  /metrics          Prometheus metrics: calls, LLM prefix-cache hits and waits, batches,
                       stage latency histograms (renders only: the LLM counters are read in
                       the background); bearer token $VOXLINE_METRICS_TOKEN when it is set
GET  /                 demo page with the widget (the `demo` key)
GET  /widget.js        the embeddable widget
GET  /webrtc/config    ICE servers for a widget key
POST /webrtc/offer     SDP offer in, answer out (a browser call starts)
PATCH /webrtc/offer    trickled ICE candidates
GET  /dashboard        live calls, recent calls, latency waterfalls ($VOXLINE_ADMIN_TOKEN;
                       see voxline/server/dashboard.py)

Every route is behind :class:`~voxline.server.http_limits.RequestLimits`: bodies are
bounded per route (413) and each client address has a request budget (429), the
address being the one a trusted proxy forwards (:mod:`voxline.server.proxies`).
On SIGTERM ``voxline serve`` drains the app (:mod:`voxline.server.drain`).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from loguru import logger

from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.personas import Persona
from voxline.server.admission import Admission
from voxline.server.dashboard import mount_dashboard
from voxline.server.drain import Drain
from voxline.server.health import ServerHealth
from voxline.server.http_limits import RequestLimits
from voxline.server.loop_lag import LoopLag
from voxline.server.metrics import (
    CONTENT_TYPE,
    LLMCounterRefresh,
    MetricsToken,
    metrics_registry,
    render_metrics,
)
from voxline.server.phone import TRY_AGAIN_LATER, HandshakeRefused, PhoneLine, WebhookRejected
from voxline.server.proxies import ForwardedHeaders, TrustedProxies
from voxline.server.telemetry import start_tracing
from voxline.server.webrtc_call import WebRTCLine
from voxline.server.webrtc_routes import add_webrtc_routes
from voxline.transports.twilio_webhook import StreamTokens

TWIML = "application/xml"


@dataclass
class Readiness:
    """What ``/health/ready`` reports besides capacity and the servers' health.

    Attributes:
        started: every persona's engines are loaded and its servers answered once.
        draining: the process is shutting down (or draining its calls): no new calls.
    """

    started: bool = False
    draining: bool = False


def create_app(config: ServerConfig, personas: dict[Path, Persona], runtime: Runtime) -> FastAPI:
    """Build the ASGI app. The Runtime is prepared for every persona at start-up.

    Args:
        config: the server config.
        personas: the personas this server answers with, by file; the first is the default.
        runtime: shared engines; the app closes it on shutdown.
    """
    by_name = {persona.name: persona for persona in personas.values()}
    # First among the call listeners: its call_started gives the call its trace id.
    telemetry = start_tracing(config.telemetry, by_name)
    if telemetry is not None:
        runtime.calls.add_listener(telemetry.listener)
    default_path = next(iter(personas))
    admission = Admission(config.max_calls)
    drain = Drain(admission, timeout_secs=config.drain_timeout_secs)
    web = WebRTCLine(
        config=config,
        runtime=runtime,
        personas={
            key: personas[widget.persona or default_path] for key, widget in config.widgets.items()
        },
        admission=admission,
        drain=drain,
    )
    numbers = {number: personas[path].name for number, path in config.numbers.items()}
    line = PhoneLine(
        config=config,
        runtime=runtime,
        personas=by_name,
        numbers=numbers,
        admission=admission,
        tokens=StreamTokens.configured(
            config.twilio.stream_secret_file, config.twilio.stream_token_ttl_secs
        ),
        drain=drain,
    )
    readiness = Readiness()
    health = ServerHealth(
        runtime,
        interval_secs=config.health.check_interval_secs,
        timeout_secs=config.health.check_timeout_secs,
        busy_limit_secs=config.health.busy_limit_secs,
    )
    counters = LLMCounterRefresh(runtime, interval_secs=config.health.check_interval_secs)
    registry = metrics_registry(runtime, line.admission)
    loop_lag = LoopLag(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            for persona in by_name.values():
                await runtime.prepare(persona)
            readiness.started = True  # `voxline serve` prints its ready line once it listens
            health.start()
            counters.start()
            loop_lag.start()
            yield
        finally:
            readiness.draining = True
            await loop_lag.stop()
            await counters.stop()
            await health.stop()
            await web.close()
            await runtime.close()
            if telemetry is not None:  # after the calls' last spans
                await asyncio.to_thread(telemetry.shutdown)

    app = FastAPI(title="voxline", lifespan=lifespan)
    app.state.phone = line
    app.state.readiness = readiness
    app.state.drain = drain

    def body_limit(path: str) -> int:
        if path.startswith("/webrtc/"):
            return max(config.http.max_body_bytes, config.webrtc.max_sdp_bytes)
        return config.http.max_body_bytes

    app.add_middleware(
        RequestLimits,
        body_limit=body_limit,
        requests_per_minute=config.http.requests_per_minute_per_ip,
    )
    # Outermost: the limits above see the client address a trusted proxy forwarded.
    app.add_middleware(ForwardedHeaders, trusted=TrustedProxies(config.http.trusted_proxies))

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def health_ready() -> JSONResponse:
        """200 when a new call would be taken and answered now; 503 and the reasons if not.

        No I/O here: the servers' health is the background check's last verdict, plus
        any embedded server its supervisor saw die (reported at once).
        """
        admission = line.admission
        problems: list[str] = []
        if not readiness.started:
            problems.append("starting: the engines are loading")
        if readiness.draining or drain.draining:
            problems.append("draining: no new calls")
        if admission.full:
            problems.append(f"full: {admission.active} of {admission.max_calls} calls")
        problems.extend(health.problems())
        body = {
            "ready": not problems,
            "calls": admission.active,
            "max_calls": admission.max_calls,
            "problems": problems,
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    metrics_token = MetricsToken.from_environment()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not metrics_token.allows(request.headers.get("Authorization")):
            return Response(
                "a bearer token is required", status_code=401, media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )  # fmt: skip
        return Response(render_metrics(registry), media_type=CONTENT_TYPE)

    add_webrtc_routes(app, web, config)
    mount_dashboard(app, runtime)

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        try:
            form = await request.form(max_files=0, max_fields=200)
        except Exception as exc:  # python-multipart's and starlette's parse errors
            logger.warning(f"voice webhook refused (400): the body is not a form ({exc})")
            return Response("the body is not a form", status_code=400, media_type="text/plain")
        params = {key: value for key, value in form.items() if isinstance(value, str)}
        url = line.public_url(str(request.base_url)) + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            twiml = line.answer_webhook(url, params, request.headers.get("X-Twilio-Signature", ""))
        except WebhookRejected as exc:
            logger.warning(f"voice webhook refused ({exc.status}): {exc}")
            return Response(str(exc), status_code=exc.status, media_type="text/plain")
        return Response(twiml, media_type=TWIML)

    @app.websocket("/twilio/stream")
    async def twilio_stream(websocket: WebSocket) -> None:
        try:
            await websocket.accept()
        except (OSError, RuntimeError, WebSocketDisconnect) as exc:
            logger.info(f"twilio stream: the peer left during the handshake ({exc!r})")
            return
        await line.serve_stream(websocket)

    @app.websocket("/twilio/stream/{instance}")
    async def twilio_stream_of(websocket: WebSocket, instance: str) -> None:
        try:
            slot = line.handshake(instance)
        except HandshakeRefused as exc:
            # Before accepting: a balancer that retries on 503 tries the next process.
            logger.info(f"twilio stream for another process refused (503): {exc}")
            refusal = Response(str(exc), status_code=503, media_type="text/plain")
            try:
                await websocket.send_denial_response(refusal)
            except (OSError, RuntimeError, WebSocketDisconnect):
                await websocket.close(TRY_AGAIN_LATER)  # the server cannot answer 503: 403
            return
        try:
            await websocket.accept()
        except (OSError, RuntimeError, WebSocketDisconnect) as exc:
            logger.info(f"twilio stream: the peer left during the handshake ({exc!r})")
            if slot is not None:
                slot.release()
            return
        await line.serve_stream(websocket, slot)

    return app
