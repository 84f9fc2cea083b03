"""One phone call's run: an admitted media stream becomes a call pipeline until it ends.

Once a stream has started and been admitted (:mod:`voxline.server.phone`), the call
is built on the shared engines with the Twilio transport, its call control (hang
up, transfer over Twilio's REST API), the persona's time limit and the process's
drain, and runs until the caller hangs up, the stream closes or breaks the
protocol, or the call is ended. Its end is logged with the stream's events and the
call's context.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import WebSocket
from loguru import logger

from voxline import logcontent
from voxline.bot.call_events import TIME_LIMIT, CallEventsForCall, CallInfo
from voxline.bot.phone_control import TwilioCallControl, run_lengths
from voxline.bot.runtime import Runtime
from voxline.bot.session import build_call
from voxline.config import TwilioConfig
from voxline.personas import Persona
from voxline.processors.latency import LatencyTracer
from voxline.server.call_run import run_pipeline
from voxline.server.drain import Drain
from voxline.transports.twilio import (
    TWILIO_RATE,
    TwilioMediaSerializer,
    TwilioStream,
    TwilioTransport,
    twilio_params,
)
from voxline.transports.twilio_protocol import Start
from voxline.transports.twilio_webhook import TwilioRestClient


async def run_call(
    websocket: WebSocket,
    persona: Persona,
    start: Start,
    *,
    runtime: Runtime,
    twilio: TwilioConfig,
    rest: TwilioRestClient | None,
    drain: Drain | None,
) -> None:
    """Run one admitted call over its media stream until the call ends.

    Args:
        websocket: the accepted stream, its ``start`` already read.
        persona: the persona answering.
        start: the stream's ``start`` message (call and stream ids, parameters).
        runtime: the shared engines.
        twilio: the server's ``twilio:`` settings (output frames, send-ahead).
        rest: Twilio's REST API for hanging up and transfers, if configured.
        drain: the process's drain, which ends the call at its deadline.
    """
    info = start.start
    stream = TwilioStream(stream_sid=info.stream_sid, call_sid=info.call_sid)
    stream.events.extend(["connected", "start"])
    serializer = TwilioMediaSerializer(stream)
    transport = TwilioTransport(
        websocket,
        stream,
        params=twilio_params(serializer, out_frame_ms=twilio.out_frame_ms),
        send_ahead_secs=twilio.send_ahead_ms / 1000,
    )
    events = runtime.calls.open(
        CallInfo(
            persona=persona.name,
            transport="twilio",
            caller=info.custom_parameters.get("caller", ""),
            called=info.custom_parameters.get("called") or None,
            call_sid=info.call_sid,
        )
    )
    tracer = LatencyTracer(on_turn=events.turn_finished)
    control = TwilioCallControl(
        stream=stream,
        gate=transport.gate,
        rest=rest,
        goodbye=persona.phrases.goodbye,
        goodbye_interruptible="goodbye" not in persona.turn.uninterruptible,
    )
    call = build_call(
        persona,
        runtime,
        transport,
        tracer=tracer,
        out_sample_rate=TWILIO_RATE,
        call_control=control,
        facts={
            "Caller's number": info.custom_parameters.get("caller", ""),
            "Call id": info.call_sid,
            "Time (UTC)": datetime.now(UTC).strftime("%A %d %B %Y, %H:%M"),
        },
    )
    control.worker = call.worker
    logger.info(f"call {info.call_sid}: stream {info.stream_sid} started")

    async def on_stop() -> None:
        await call.worker.cancel(reason="caller hung up")

    stream.on_stop = on_stop

    async def on_violation(reason: str) -> None:
        logger.warning(f"call {info.call_sid}: stream closed: {reason}")
        await transport.refuse(reason)
        await call.worker.cancel(reason=reason)

    stream.on_violation = on_violation

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport, _websocket) -> None:
        await call.worker.cancel(reason="media stream closed")

    limit = asyncio.get_running_loop().call_later(
        persona.limits.max_call_secs,
        lambda: asyncio.ensure_future(_end_call(control, events)),
    )
    underruns: list[float] = []

    def underrun(secs: float) -> None:
        underruns.append(secs)
        logger.debug(f"call {info.call_sid}: the caller ran out of audio for {secs * 1e3:.0f} ms")
        events.audio_underrun(secs)

    transport.output().on_underrun = underrun
    events.attach(call.worker, tracer)
    try:
        await run_pipeline(call.worker, events, control, drain=drain, name=f"call {info.call_sid}")
    finally:
        limit.cancel()
        events.end()
        log = events.bound_logger()  # the end-of-call lines carry the call's ids too
        log.info(
            f"call {info.call_sid} ended: events {run_lengths(stream.events)}; "
            f"{len(stream.dropped)} dropped; {len(tracer.turns)} turns; "
            f"{len(underruns)} audio underruns ({sum(underruns):.2f} s)"
        )
        # The persona's own prompt is not in the context (the LLM service's
        # system_instruction): the context starts with the call's facts.
        messages = call.context.get_messages()
        log.info(f"call {info.call_sid} context {logcontent.messages(messages)}")


async def _end_call(control: TwilioCallControl, events: CallEventsForCall) -> None:
    logger.info(f"call {control.call_sid}: max_call_secs reached")
    events.note_end_reason(TIME_LIMIT)
    await control.end_call()  # once per call, with end_call and the drain's deadline
