"""Browser calls: a widget's offer becomes one call pipeline on the shared engines.

Each accepted offer gets a pipecat SmallWebRTC connection (aiortc) and a call
built from the widget key's persona, exactly as a phone call is. The page hears
the bot on the connection's audio track and receives, on its data channel, what
both sides said, when turns start and stop, and each turn's latency. When the
browser hangs up or vanishes (ICE fails), the call's pipeline is cancelled and
its admission slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

from loguru import logger
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import IceServer, SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)

from voxline import logcontent
from voxline.bot.call_control import PipelineCallControl
from voxline.bot.call_events import TIME_LIMIT, CallInfo
from voxline.bot.runtime import Runtime
from voxline.bot.session import STT_SAMPLE_RATE, build_call
from voxline.config import ServerConfig
from voxline.personas import Persona
from voxline.processors.latency import LatencyTracer
from voxline.processors.turn_trace import TurnTrace
from voxline.server.admission import Admission, CallRejected, Slot
from voxline.server.call_run import run_pipeline
from voxline.server.drain import Drain
from voxline.server.page_events import PageEvents
from voxline.transports.rate_limit import RateLimiter
from voxline.transports.webrtc import (
    CandidatePatch,
    Offer,
    SignalingError,
    check_origin,
    check_sdp,
    is_mdns_candidate,
    strip_mdns_candidates,
)
from voxline.transports.webrtc_playout import PlayoutWebRTCTransport

OUT_SAMPLE_RATE = 24_000
# A browser sends audio packets continuously, silence included; none for this long means
# it is gone (ICE consent freshness alone takes ~30 s to notice a vanished peer).
SILENT_PEER_SECS = 6.0
# An answered offer's line waits this long for its call to start.
OFFER_HOLD_SECS = 30.0


@dataclass
class WebRTCLine:
    """Answers widget offers with calls.

    Attributes:
        config: the server config (widget keys, ICE servers, limits).
        runtime: the shared engines.
        personas: persona by widget key.
        admission: the server's call capacity, shared with phone calls.
    """

    config: ServerConfig
    runtime: Runtime
    personas: dict[str, Persona]
    admission: Admission
    drain: Drain | None = None
    """The process's drain, which ends the calls still running at its deadline."""
    _handler: SmallWebRTCRequestHandler = field(init=False)
    _limiter: RateLimiter = field(init=False)
    _patch_limiter: RateLimiter = field(init=False)
    _calls: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _keys: dict[str, str] = field(default_factory=dict, init=False)
    """Widget key of every live connection, by pc_id."""

    def __post_init__(self) -> None:
        ice = [
            IceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.config.webrtc.ice_servers
        ]
        self._handler = SmallWebRTCRequestHandler(ice_servers=ice)
        self._limiter = RateLimiter(self.config.webrtc.offers_per_minute_per_ip)
        self._patch_limiter = RateLimiter(self.config.webrtc.candidate_patches_per_minute_per_ip)

    @property
    def active_calls(self) -> int:
        """Browser calls whose pipeline is still running."""
        return len(self._calls)

    def check_page(
        self, key: str, origin: str | None, own_origin: str, *, require_origin: bool = True
    ) -> str | None:
        """The CORS origin to answer with for ``key`` from ``origin``.

        Args:
            key: the widget key.
            origin: the request's ``Origin`` header, if any.
            own_origin: this server's own origin (for keys without allowed origins).
            require_origin: refuse a request without ``Origin`` unless the key takes
                non-browser clients (False for ``GET``, which same-origin pages send
                without one).

        Raises:
            SignalingError: 404 unknown key, 403 disallowed origin.
        """
        widget = self.config.widgets.get(key)
        if widget is None or key not in self.personas:
            raise SignalingError(404, f"unknown widget key {key!r}")
        return check_origin(widget, origin, own_origin, require_origin=require_origin)

    async def answer(self, offer: Offer, client_ip: str) -> dict:
        """Accept an offer: take a line, start the call and return the SDP answer.

        An offer that names the ``pc_id`` of a live connection of the same widget
        key renegotiates that call and takes no new line; any other offer is a new
        call, whose line is checked and taken in one step before any work is done.

        Raises:
            SignalingError: 429 too many offers from this address, 404 a ``pc_id``
                of another key, 503 busy, 400 bad SDP.
        """
        if not self._limiter.allow(client_ip):
            raise SignalingError(429, "too many offers from this address; try again in a minute")
        check_sdp(offer.sdp)
        pc_id = offer.pc_id if offer.pc_id in self._keys else None
        if pc_id is not None and self._keys[pc_id] != offer.key:
            raise SignalingError(404, "unknown connection for this widget key")
        slot = None
        if pc_id is None:
            slot = self.admission.try_take(hold_secs=OFFER_HOLD_SECS)
            if slot is None and self.admission.closed:
                raise SignalingError(503, "busy: this server is closing, please call again")
            if slot is None:
                raise SignalingError(503, "busy: every line is taken, please try again shortly")
        persona = self.personas[offer.key]
        request = SmallWebRTCRequest(
            sdp=strip_mdns_candidates(offer.sdp),
            type=offer.type,
            pc_id=pc_id,
            restart_pc=offer.restart_pc,
        )

        started = False

        async def start(connection: SmallWebRTCConnection) -> None:
            nonlocal started
            assert slot is not None  # a renegotiation starts no call
            started = True
            self._keys[connection.pc_id] = offer.key
            task = asyncio.create_task(self._run_call(connection, persona, slot, offer.key))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

        try:
            answer = await self._handler.handle_web_request(request, start)
        except Exception as exc:  # aiortc's SDP parser: ValueError, KeyError, bare asserts
            if getattr(exc, "status_code", None):
                raise SignalingError(int(exc.status_code), str(exc)) from None
            reason = f"malformed SDP: it could not be answered ({str(exc) or type(exc).__name__})"
            raise SignalingError(400, reason) from None
        finally:
            if slot is not None and not started:
                slot.release()  # no call took the line
        if answer is None:
            raise SignalingError(400, "the offer produced no answer")
        return answer

    async def add_candidates(self, patch: CandidatePatch, client_ip: str) -> None:
        """Trickled ICE candidates for a live connection of the patch's key (mDNS ones dropped).

        Raises:
            SignalingError: 429 too many patches from this address, 404 when the
                connection is unknown or belongs to another widget key, 400 for a
                candidate aiortc cannot parse.
        """
        if not self._patch_limiter.allow(client_ip):
            raise SignalingError(429, "too many candidate patches from this address")
        if self._keys.get(patch.pc_id) != patch.key:
            raise SignalingError(404, "unknown connection for this widget key")
        request = SmallWebRTCPatchRequest(
            pc_id=patch.pc_id,
            candidates=[
                IceCandidate(c.candidate, c.sdp_mid, c.sdp_mline_index)
                for c in patch.candidates
                if not is_mdns_candidate(c.candidate)
            ],
        )
        try:
            await self._handler.handle_patch_request(request)
        except Exception as exc:
            status = int(getattr(exc, "status_code", 400))
            raise SignalingError(status, f"candidates refused: {exc}") from None

    async def _run_call(
        self, connection: SmallWebRTCConnection, persona: Persona, slot: Slot, key: str = ""
    ) -> None:
        try:
            async with self.admission.hold(slot):
                await self._serve(connection, persona, key)
        except CallRejected as exc:
            logger.warning(f"browser call refused: {exc}")
            await connection.disconnect()
        except Exception as exc:
            logger.error(f"browser call {connection.pc_id} failed: {type(exc).__name__}: {exc}")
            logger.opt(exception=exc).debug("browser call failure")
            with contextlib.suppress(Exception):
                await connection.disconnect()
        finally:
            self._keys.pop(connection.pc_id, None)

    async def _serve(self, connection: SmallWebRTCConnection, persona: Persona, key: str) -> None:
        transport = PlayoutWebRTCTransport(
            connection,
            TransportParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                audio_in_sample_rate=STT_SAMPLE_RATE,
                audio_out_sample_rate=OUT_SAMPLE_RATE,
            ),
        )
        events = PageEvents(connection)
        lifecycle = self.runtime.calls.open(
            CallInfo(persona=persona.name, transport="webrtc", caller=key)
        )

        def on_turn(turn: TurnTrace) -> None:
            events.turn(turn)
            lifecycle.turn_finished(turn)

        tracer = LatencyTracer(on_turn=on_turn)
        control = PipelineCallControl(
            persona.phrases.goodbye, interruptible="goodbye" not in persona.turn.uninterruptible
        )
        call = build_call(
            persona,
            self.runtime,
            transport,
            tracer=tracer,
            out_sample_rate=OUT_SAMPLE_RATE,
            call_control=control,
            facts={"Channel": "web browser", "Call id": connection.pc_id},
        )
        call.worker.add_observer(events)

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport, _connection) -> None:
            await call.worker.cancel(reason="browser disconnected")

        @connection.event_handler("failed")
        async def _failed(_connection) -> None:
            await call.worker.cancel(reason="browser vanished (ICE failed)")

        events.send({"type": "call-started", "persona": persona.name})
        logger.info(f"browser call {connection.pc_id}: persona {persona.name}")
        limit = asyncio.get_running_loop().call_later(
            persona.limits.max_call_secs,
            lambda: asyncio.ensure_future(call.worker.cancel(reason=TIME_LIMIT)),
        )

        async def watch_peer() -> None:
            while True:
                await asyncio.sleep(1.0)  # a periodic check, not synchronisation
                if time.monotonic() - events.last_audio > SILENT_PEER_SECS:
                    logger.warning(f"browser call {connection.pc_id}: no audio, peer gone")
                    await call.worker.cancel(reason="browser stopped sending audio")
                    return

        watchdog = asyncio.create_task(watch_peer())
        lifecycle.attach(call.worker, tracer)
        try:
            name = f"browser call {connection.pc_id}"
            await run_pipeline(call.worker, lifecycle, control, drain=self.drain, name=name)
        finally:
            limit.cancel()
            watchdog.cancel()
            lifecycle.end()
            log = lifecycle.bound_logger()  # the end-of-call lines carry the call's ids too
            with contextlib.suppress(Exception):
                await connection.disconnect()
            log.info(f"browser call {connection.pc_id} ended")
            # What the bot said (every chunk written) and what went into the context (the
            # chunks the browser was sent before any barge-in; not the persona's prompt, which
            # is the LLM service's system instruction).
            gate = transport.output().gate
            spoken = f"{len(gate.spoken)} chunks"
            if logcontent.enabled():
                spoken = json.dumps(gate.spoken)
            log.info(f"browser call {connection.pc_id} spoken {spoken}")
            messages = call.context.get_messages()
            log.info(f"browser call {connection.pc_id} context {logcontent.messages(messages)}")

    async def close(self) -> None:
        """Hang up every browser call (server shutdown)."""
        await self._handler.close()
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
