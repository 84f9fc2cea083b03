"""The call lifecycle hub: every listener hears every event; a failing one ends no call."""

from __future__ import annotations

import asyncio
import json

from loguru import logger
from pipecat.frames.frames import CancelFrame, TranscriptionFrame, TTSTextFrame
from pipecat.observers.base_observer import FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection

from voxline import call_log
from voxline.bot.call_events import CallEvents, CallInfo, CallListener
from voxline.processors.latency import LatencyTracer
from voxline.processors.turn_trace import TurnTrace


class Recorder(CallListener):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def call_started(self, info):
        self.events.append(("started", info.call_id))

    def caller_said(self, info, text):
        self.events.append(("caller", text))

    def bot_said(self, info, text):
        self.events.append(("bot", text))

    def turn_finished(self, info, turn):
        self.events.append(("turn", turn.index))

    def call_ended(self, info, reason, unfinished):
        self.events.append(("ended", reason, unfinished.index if unfinished else None))


class Broken(CallListener):
    def call_started(self, info):
        raise RuntimeError("listener bug")

    def turn_finished(self, info, turn):
        raise RuntimeError("listener bug")


class Worker:
    """Stands in for a PipelineWorker: the hub only adds its observer."""

    def __init__(self) -> None:
        self.observers: list = []
        self.pipeline = Pipeline([])

    def add_observer(self, observer) -> None:
        self.observers.append(observer)


def pushed(frame, direction=FrameDirection.DOWNSTREAM) -> FramePushed:
    return FramePushed(source=None, destination=None, frame=frame, direction=direction, timestamp=5)  # type: ignore[arg-type]


def test_events_reach_every_listener_in_order_and_a_broken_one_is_counted():
    hub = CallEvents()
    broken, recorder = Broken(), Recorder()
    hub.add_listener(broken)
    hub.add_listener(recorder)
    info = CallInfo(persona="bank", transport="twilio", caller="+15550001111", call_sid="CA1")
    call = hub.open(info)
    tracer = LatencyTracer(on_turn=call.turn_finished)
    call.attach(Worker(), tracer)  # type: ignore[arg-type]
    assert hub.live == {info.call_id: info}

    async def frames() -> None:
        await call.on_push_frame(pushed(TranscriptionFrame("hello there", "u", "t")))
        await call.on_push_frame(pushed(TTSTextFrame("Hi", text_type="word")))
        await call.on_push_frame(pushed(CancelFrame(reason="caller hung up")))

    asyncio.run(frames())
    finished = TurnTrace(index=1, complete=True)
    call.turn_finished(finished)
    tracer.trace.turns.extend([finished, TurnTrace(index=2)])  # turn 2 still in progress
    call.end("ignored: the cancel frame said why first")
    call.end()  # once only
    assert recorder.events == [
        ("started", info.call_id),
        ("caller", "hello there"),
        ("bot", "Hi"),
        ("turn", 1),
        ("ended", "caller hung up", 2),
    ]
    assert hub.listener_errors == 2
    assert hub.live == {}
    assert info.end_reason == "caller hung up" and info.ended_at is not None
    assert len(info.call_id) == 32


def test_a_calls_log_lines_carry_its_id_and_trace_id():
    hub = CallEvents()
    info = CallInfo(persona="bank", transport="webrtc", caller="demo")
    call = hub.open(info)
    call.attach(Worker(), LatencyTracer())  # type: ignore[arg-type]
    lines: list[str] = []
    sink = logger.add(lines.append, format=call_log.log_format)
    try:
        with call.log_context():
            logger.info("inside")
            info.trace_id = "ab" * 16
            logger.info("traced")
        logger.info("outside")
    finally:
        logger.remove(sink)
    assert f"[call {info.call_id}] - inside" in lines[0]
    assert f"[call {info.call_id} trace {'ab' * 16}] - traced" in lines[1]
    assert "[call" not in lines[2]


def test_a_turn_the_caller_hung_up_on_is_logged_as_unfinished_with_the_calls_id():
    hub = CallEvents()
    info = CallInfo(persona="bank", transport="twilio", caller="+15550001111", call_sid="CA2")
    call = hub.open(info)
    tracer = LatencyTracer()
    call.attach(Worker(), tracer)  # type: ignore[arg-type]
    tracer.trace.turns.extend([TurnTrace(index=1, complete=True), TurnTrace(index=2)])
    lines: list[str] = []
    sink = logger.add(lines.append, format=call_log.log_format, level="INFO")
    try:
        call.end("caller hung up")
    finally:
        logger.remove(sink)
    turns = [line for line in lines if " - turn {" in line]
    assert len(turns) == 1, lines  # the finished turn was logged when it finished
    assert f"[call {info.call_id}]" in turns[0]
    logged = json.loads(turns[0].split(" - turn ", 1)[1])
    assert logged["turn"] == 2 and logged["unfinished"] is True
