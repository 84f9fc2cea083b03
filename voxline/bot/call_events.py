"""Call lifecycle events: one place that hears every call start, turn and end.

Call records, traces, metrics and the dashboard all need the same few facts about
a call, as it happens: that it started (who called which line, with which
persona), what each side said, each turn's latency trace when the turn is over,
and how the call ended, with the turn the caller hung up on if there was one.
The transports (phone, browser, ``talk``) report those facts to the Runtime's
:class:`CallEvents` hub; the hub hands them to every registered listener.

Adding a listener::

    class MyListener(CallListener):      # override only what you need
        def call_started(self, info: CallInfo) -> None: ...
        def turn_finished(self, info: CallInfo, turn: TurnTrace) -> None: ...
        def call_ended(self, info, reason, unfinished): ...

    runtime.calls.add_listener(MyListener())

Listeners are called on the event loop, in the call's own task, synchronously:
they must return at once (hand slow work, such as I/O, to a task or a bounded
queue of their own). A listener that raises is logged (its first failure with
the traceback, later ones counted in :attr:`CallEvents.listener_errors`) and the
call goes on; the other listeners still hear the event.

How a transport reports a call::

    call = runtime.calls.open(CallInfo(persona=..., transport="twilio", caller=...))
    tracer = LatencyTracer(on_turn=call.turn_finished)
    ...build the pipeline worker...
    call.attach(worker, tracer)          # call_started; watches transcripts and the end
    try:
        with call.log_context():         # every log line of the call carries call_id
            await runner.run()
    finally:
        call.end()                       # call_ended, with an unfinished turn if any
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    FunctionCallsStartedFrame,
    StartFrame,
    TranscriptionFrame,
    TTSTextFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMAssistantAggregator,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voxline import call_log
from voxline.processors.latency import LatencyTracer
from voxline.processors.turn_trace import TurnTrace

if TYPE_CHECKING:
    from loguru import Logger

Transport = Literal["twilio", "webrtc", "talk"]

DEFAULT_END_REASON = "ended"
BOT_ENDED = "the bot ended the call"
TIME_LIMIT = "call time limit"


@dataclass
class CallInfo:
    """Who is on one call, and since when.

    Attributes:
        persona: the persona's name.
        transport: ``twilio`` (a phone call), ``webrtc`` (a browser widget) or ``talk``.
        caller: the caller's phone number (``twilio``), the widget key (``webrtc``), or "".
        called: the number that was called (``twilio``), else None.
        call_sid: Twilio's CallSid for a phone call, else None.
        call_id: this call's own id (a new uuid4 hex), in records and log lines.
        started_at: when the call started (UTC).
        trace_id: the call's OpenTelemetry trace id (hex), set by the tracing
            listener in its ``call_started`` if tracing is on; None otherwise.
        clock_origin_ns: wall-clock time (``time.time_ns()``) at which the call's
            pipeline clock read 0, once the pipeline started: a
            :class:`TurnTrace` time ``t`` happened at ``clock_origin_ns + t``.
        ended_at: when the call ended (UTC), once it has.
        end_reason: why it ended, once it has.
    """

    persona: str
    transport: Transport
    caller: str = ""
    called: str | None = None
    call_sid: str | None = None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    trace_id: str | None = None
    clock_origin_ns: int | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None

    def wall_time(self, clock_ns: int | None) -> datetime | None:
        """A pipeline-clock time (as in :class:`TurnTrace`) as a UTC datetime."""
        if clock_ns is None or self.clock_origin_ns is None:
            return None
        return datetime.fromtimestamp((self.clock_origin_ns + clock_ns) / 1e9, UTC)


class CallListener:
    """Hears call events; override what you need (every method does nothing by default).

    All methods run on the event loop and must not block (see the module docstring).
    """

    def call_started(self, info: CallInfo) -> None:
        """A call started (its pipeline is built and about to run)."""

    def caller_said(self, info: CallInfo, text: str) -> None:
        """A transcript of the caller's words, as soon as the turn is taken."""

    def bot_said(self, info: CallInfo, text: str) -> None:
        """Words of the bot's reply, as their audio goes out (a few words at a time)."""

    def bot_heard(self, info: CallInfo, turn: int, text: str, interrupted: bool) -> None:
        """What the caller heard of one bot reply, once it played (or was cut off).

        ``turn`` is the caller turn it answers (its :attr:`TurnTrace.index`), 0 for
        the greeting. This is the text that went into the LLM context: on a barge-in
        it ends with the last chunk the caller heard. It may come after that turn's
        :meth:`turn_finished` (the phone's marks come back once the audio played),
        and a turn may have several (a reply before and after a tool call).
        """

    def turn_finished(self, info: CallInfo, turn: TurnTrace) -> None:
        """A caller turn is over (answered, interrupted or failed), with its trace."""

    def audio_underrun(self, info: CallInfo, secs: float) -> None:
        """The caller ran out of the bot's audio in mid-speech and heard ``secs`` of
        nothing before the next came (phone calls)."""

    def call_ended(self, info: CallInfo, reason: str, unfinished: TurnTrace | None) -> None:
        """The call ended; ``unfinished`` is a turn still in progress then (or None).

        ``info.ended_at`` and ``info.end_reason`` are set.
        """


class CallEvents:
    """The fan-out: every call's events to every listener. The Runtime owns one.

    Attributes:
        live: calls in progress by ``call_id`` (for a dashboard's live view).
        listener_errors: how many times a listener raised.
    """

    def __init__(self) -> None:
        self._listeners: list[CallListener] = []
        self.live: dict[str, CallInfo] = {}
        self.listener_errors = 0
        self._failed: set[tuple[int, str]] = set()

    @property
    def listeners(self) -> tuple[CallListener, ...]:
        """The registered listeners, in the order they hear events."""
        return tuple(self._listeners)

    def add_listener(self, listener: CallListener) -> None:
        """Register ``listener`` for every call that starts from now on."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: CallListener) -> None:
        """Stop telling ``listener`` anything."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def open(self, info: CallInfo) -> CallEventsForCall:
        """The reporter for one new call; nothing is announced until it is attached."""
        return CallEventsForCall(self, info)

    def emit(self, event: str, *args: object) -> None:
        """Call ``event`` on every listener; a listener that raises never stops the call."""
        for listener in list(self._listeners):
            try:
                getattr(listener, event)(*args)
            except Exception as exc:
                self.listener_errors += 1
                key = (id(listener), event)
                if key in self._failed:
                    logger.debug(f"call listener {type(listener).__name__}.{event} failed: {exc!r}")
                    continue
                self._failed.add(key)
                logger.opt(exception=exc).error(
                    f"call listener {type(listener).__name__}.{event} failed: "
                    f"{type(exc).__name__}: {exc} (further failures are counted, not logged)"
                )


class CallEventsForCall(BaseObserver):
    """One call's reporter: announces its start, turns and end; watches its frames.

    As a pipecat observer it forwards the live transcript (caller transcriptions
    and the bot's spoken text) and notes the reason of the first end or cancel
    frame, which becomes the call's end reason unless :meth:`end` is given one.
    """

    def __init__(self, hub: CallEvents, info: CallInfo):
        super().__init__(observe_every_push=False)
        self.hub = hub
        self.info = info
        self._tracer: LatencyTracer | None = None
        self._started = False
        self._ended = False
        self._reason: str | None = None
        self._reply_turn: int | None = None

    def attach(self, worker: PipelineWorker, tracer: LatencyTracer) -> None:
        """Watch ``worker``'s frames and announce the call (``call_started``)."""
        self._tracer = tracer
        worker.add_observer(self)
        assistant = _find(worker.pipeline, LLMAssistantAggregator)
        if assistant is not None:
            assistant.add_event_handler("on_assistant_turn_started", self._assistant_started)
            assistant.add_event_handler("on_assistant_turn_stopped", self._assistant_stopped)
        self._started = True
        self.hub.live[self.info.call_id] = self.info
        call_log.register(self.info.call_id, self.info)
        self.hub.emit("call_started", self.info)

    def turn_finished(self, turn: TurnTrace) -> None:
        """A :class:`LatencyTracer` ``on_turn`` callback: announce the finished turn."""
        if self._started and not self._ended:
            self.hub.emit("turn_finished", self.info, turn)

    def audio_underrun(self, secs: float) -> None:
        """An output's ``on_underrun`` callback: announce the gap the caller heard."""
        if self._started and not self._ended:
            self.hub.emit("audio_underrun", self.info, secs)

    async def _assistant_started(self, _aggregator: object) -> None:
        self._reply_turn = len(self._tracer.turns) if self._tracer is not None else 0

    async def _assistant_stopped(
        self, _aggregator: object, message: AssistantTurnStoppedMessage
    ) -> None:
        if self._ended or not message.content.strip():
            return
        turn = self._reply_turn
        if turn is None:
            turn = len(self._tracer.turns) if self._tracer is not None else 0
        self._reply_turn = None
        self.hub.emit("bot_heard", self.info, turn, message.content.strip(), message.interrupted)

    def note_end_reason(self, reason: str) -> None:
        """Why the call is ending, if nothing said so before (the first reason wins)."""
        if self._reason is None:
            self._reason = reason

    @contextlib.contextmanager
    def log_context(self) -> Iterator[None]:
        """Every log line inside (and in tasks started inside) carries this ``call_id``."""
        with logger.contextualize(**self._log_ids()):
            yield

    def bound_logger(self) -> Logger:
        """A logger whose lines carry this call's ids, for lines logged outside
        :meth:`log_context` (the end-of-call lines, after :meth:`end`)."""
        return logger.bind(**self._log_ids())

    def _log_ids(self) -> dict[str, str]:
        ids = {"call_id": self.info.call_id}
        if self.info.trace_id is not None:  # known once the call started, if traced
            ids["trace_id"] = self.info.trace_id
        return ids

    def end(self, reason: str | None = None) -> None:
        """Announce the end (``call_ended``), once; the first reason noted wins over ``reason``."""
        if not self._started or self._ended:
            return
        self._ended = True
        self.note_end_reason(reason or DEFAULT_END_REASON)
        self.info.ended_at = datetime.now(UTC)
        self.info.end_reason = self._reason
        unfinished = None
        if self._tracer is not None:
            open_turns = [turn for turn in self._tracer.turns if not turn.complete]
            unfinished = open_turns[-1] if open_turns else None
        if unfinished is not None:
            # The tracer logs a turn when it is over; this one never will be.
            line = json.dumps({**unfinished.log_dict(), "unfinished": True})
            self.bound_logger().info(f"turn {line}")
        self.hub.live.pop(self.info.call_id, None)
        call_log.unregister(self.info.call_id)
        self.hub.emit("call_ended", self.info, self._reason, unfinished)

    async def on_push_frame(self, data: FramePushed) -> None:
        """Forward the live transcript; note the end reason."""
        frame = data.frame
        if self._ended:
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            reason = frame.reason
            self.note_end_reason(str(reason) if reason else BOT_ENDED)
            return
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, StartFrame):
            if self.info.clock_origin_ns is None:
                self.info.clock_origin_ns = time.time_ns() - data.timestamp
        elif isinstance(frame, TranscriptionFrame):
            if frame.text.strip():
                self.hub.emit("caller_said", self.info, frame.text.strip())
        elif isinstance(frame, TTSTextFrame):
            if frame.text:
                self.hub.emit("bot_said", self.info, frame.text)
        elif isinstance(frame, FunctionCallsStartedFrame) and any(
            call.function_name == "end_call" for call in frame.function_calls
        ):
            self.note_end_reason(BOT_ENDED)


def _find(processor: FrameProcessor, kind: type) -> FrameProcessor | None:
    """The first processor of type ``kind`` in a pipeline (depth first), if any."""
    if isinstance(processor, kind):
        return processor
    for child in processor.processors:
        found = _find(child, kind)
        if found is not None:
            return found
    return None
