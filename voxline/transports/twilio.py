"""Phone calls through Twilio: the media-stream serializer and the transport.

A call runs over one Media Streams websocket (the webhook side is in
``twilio_webhook``). What the caller has actually
heard is tracked with marks: each spoken chunk's text is held back from the LLM
context until Twilio echoes the mark sent after its audio, so on barge-in (when
voxline sends ``clear``) the context keeps only the words that were played
(:mod:`~voxline.transports.twilio_output`).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import WebSocket, WebSocketDisconnect
from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw, ulaw_to_pcm
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from starlette.websockets import WebSocketState

from voxline.transports.rate_limit import RateLimiter
from voxline.transports.twilio_output import MarkGate, TwilioOutputTransport
from voxline.transports.twilio_protocol import (
    DTMF,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from voxline.transports.upsampler import StreamUpsampler

TWILIO_RATE = 8000
POLICY_VIOLATION = 1008
"""The close code for a stream refused for what its peer sent."""
MAX_WEBSOCKET_MESSAGE_BYTES = 131_072
"""The server closes a websocket (1009) on a larger message; Twilio's are under 1 KB."""
KEYPAD = frozenset(entry.value for entry in KeypadEntry)
"""The keys a call hears: 0-9, * and #. Twilio also reports A-D (from some handsets)."""

MAX_MESSAGES_PER_SEC = 100.0
"""Inbound messages a stream may send per second, sustained (Twilio sends 50 media a second)."""
MESSAGE_BURST = 250
"""Messages a stream may send at once beyond the sustained rate (a network hiccup's backlog)."""
MAX_AUDIO_AHEAD_SECS = 5.0
"""How far the caller's audio may run ahead of the wall clock since ``start``."""


class InboundBudget:
    """Bounds what one media stream may send: a message rate, and audio no faster than real time.

    Twilio sends one 20 ms ``media`` message every 20 ms, plus a few ``mark``
    echoes and ``dtmf`` events; after a network hiccup it may send a backlog at
    once. A peer that floods beyond that would only feed the call's queues, so
    the stream is closed instead.

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._started = clock()
        # A burst of MESSAGE_BURST, refilled at MAX_MESSAGES_PER_SEC.
        self._messages = RateLimiter(
            MESSAGE_BURST, window_secs=MESSAGE_BURST / MAX_MESSAGES_PER_SEC, max_keys=1
        )
        self._audio_secs = 0.0

    def message(self) -> str | None:
        """Count one inbound message; the reason to close the stream, or None."""
        if not self._messages.allow("stream", self._clock()):
            return f"more than {MAX_MESSAGES_PER_SEC:.0f} messages a second"
        return None

    def audio(self, num_bytes: int) -> str | None:
        """Count ``num_bytes`` of 8 kHz µ-law; the reason to close the stream, or None."""
        self._audio_secs += num_bytes / TWILIO_RATE
        ahead = self._audio_secs - (self._clock() - self._started)
        if ahead > MAX_AUDIO_AHEAD_SECS:
            return f"media arrives faster than real time ({ahead:.1f} s ahead)"
        return None


async def close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    """Close ``websocket`` with ``code`` and ``reason``; a peer that is already gone is no error.

    A hostile or broken peer often closes first: answering its close must not
    raise (and leave a traceback in the server log).
    """
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        # A close reason is at most 123 bytes of UTF-8.
        await websocket.close(code=code, reason=reason.encode()[:120].decode(errors="ignore"))


# --- media stream: serializer and mark gate ---------------------------------------------


@dataclass
class TwilioStream:
    """One media stream's identity and protocol log.

    Attributes:
        stream_sid: Twilio's stream id (every outbound message carries it).
        call_sid: the call's id, for REST hang-up and transfer.
        events: the inbound event names in arrival order (bounded).
        dropped: messages dropped as invalid, with the reason.
        audio_outstanding: audio was sent that Twilio may not have played yet.
        budget: the bound on what the peer may send (started with the stream).
        on_violation: called once, with the reason, when the peer exceeds its budget.
    """

    stream_sid: str
    call_sid: str
    events: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))
    dropped: deque[str] = field(default_factory=lambda: deque(maxlen=1000))
    audio_outstanding: bool = False
    on_mark: Callable[[str], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    budget: InboundBudget = field(default_factory=InboundBudget)
    on_violation: Callable[[str], Awaitable[None]] | None = None
    violated: str | None = None


class TwilioMediaSerializer(FrameSerializer):
    """Frames to and from Twilio Media Streams messages.

    Every inbound event is handled: ``media`` becomes input audio (µ-law 8 kHz to
    16-bit PCM at the pipeline rate), ``dtmf`` a keypad frame, ``mark`` echoes go
    to the mark gate, ``stop`` ends the call. A malformed message, a repeated
    ``start`` or a keypad key the call cannot hear (A-D) is logged and dropped; it
    never ends the call. A peer that floods the stream beyond its
    :class:`InboundBudget` is reported once through ``stream.on_violation``.
    """

    def __init__(self, stream: TwilioStream, **kwargs):
        super().__init__(**kwargs)
        self.stream = stream
        self._in_rate = 16000
        self._out_rate = TWILIO_RATE
        # Not pipecat's stream resampler: it hands 8 kHz audio on in ~95 ms bursts (upsampler).
        self._in_resampler = StreamUpsampler()
        self._out_resampler = create_stream_resampler()

    async def setup(self, setup: FrameProcessorSetup):
        """Learn the pipeline's audio rates."""
        await super().setup(setup)
        self._in_rate = setup.audio_in_sample_rate
        self._out_rate = setup.audio_out_sample_rate

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """Outbound audio as ``media``, interruptions as ``clear``, marks as ``mark``."""
        sid = self.stream.stream_sid
        if isinstance(frame, InterruptionFrame):
            # Only audio Twilio may still be playing needs clearing.
            if not self.stream.audio_outstanding:
                return None
            self.stream.audio_outstanding = False
            return clear_message(sid)
        if isinstance(frame, OutputAudioRawFrame):
            self.stream.audio_outstanding = True
            mulaw = await pcm_to_ulaw(
                frame.audio, frame.sample_rate, TWILIO_RATE, self._out_resampler
            )
            return media_message(sid, mulaw) if mulaw else None
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            message = frame.message
            if isinstance(message, dict) and message.get("voxline") == "mark":
                return mark_message(sid, str(message["name"]))
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """One inbound message to a frame, or None (after logging) if there is none to push."""
        stream = self.stream
        if stream.violated is not None:
            return None
        if (reason := stream.budget.message()) is not None:
            return await self._violation(reason)
        try:
            message = parse_message(data)
            if isinstance(message, Media):
                audio = message.audio()
        except ProtocolError as exc:
            return self._drop(str(exc))
        stream.events.append(message.event)
        if isinstance(message, Media):
            if not audio:
                return None
            if (reason := stream.budget.audio(len(audio))) is not None:
                return await self._violation(reason)
            pcm = await ulaw_to_pcm(audio, TWILIO_RATE, self._in_rate, self._in_resampler)
            return InputAudioRawFrame(audio=pcm, sample_rate=self._in_rate, num_channels=1)
        if isinstance(message, DTMF):
            digit = message.dtmf.digit
            if digit not in KEYPAD:
                return self._drop(f"keypad key {digit} ignored (a call hears 0-9, * and #)")
            return InputDTMFFrame(button=KeypadEntry(digit))
        if isinstance(message, Mark):
            if stream.on_mark is not None:
                await stream.on_mark(message.mark.name)
            return None
        if isinstance(message, Stop):
            logger.info(f"twilio stream {stream.stream_sid}: stop")
            if stream.on_stop is not None:
                await stream.on_stop()
            return None
        if isinstance(message, Start):
            return self._drop("a second start message in the same stream, ignored")
        return None  # connected: nothing to push

    def _drop(self, reason: str) -> None:
        self.stream.dropped.append(reason)
        logger.warning(f"twilio stream {self.stream.stream_sid}: dropped message: {reason}")
        return None

    async def _violation(self, reason: str) -> None:
        self.stream.violated = reason
        self.stream.dropped.append(reason)
        if self.stream.on_violation is not None:
            await self.stream.on_violation(reason)
        return None


class TwilioTransport(FastAPIWebsocketTransport):
    """pipecat's FastAPI websocket transport speaking Twilio Media Streams with marks."""

    def __init__(
        self,
        websocket,
        stream: TwilioStream,
        *,
        params: FastAPIWebsocketParams,
        send_ahead_secs: float,
    ):
        super().__init__(websocket, params)
        self.stream = stream
        self.gate = MarkGate(self._send_mark, on_drained=self._played_all)
        stream.on_mark = self.gate.on_mark
        self._output = self._twilio_output = TwilioOutputTransport(
            self,
            self._client,
            self._params,
            gate=self.gate,
            send_ahead_secs=send_ahead_secs,
            name=self._output_name,
        )

    def output(self) -> TwilioOutputTransport:
        """The output processor: paced, held on possible barge-ins, reporting underruns."""
        return self._twilio_output

    def _played_all(self) -> None:
        self.stream.audio_outstanding = False

    async def _send_mark(self, name: str) -> None:
        await self._client.send(mark_message(self.stream.stream_sid, name))

    async def refuse(self, reason: str, code: int = POLICY_VIOLATION) -> None:
        """Close the media stream with ``code`` and ``reason`` (the peer broke the protocol).

        The pipecat client is told the close is ours first, so it neither sends on
        the closed socket nor closes it a second time when the call is torn down.
        """
        self._client._closing = True  # pipecat 1.14 has no public way to say so
        await close_quietly(self._client._websocket, code, reason)


def twilio_params(
    serializer: TwilioMediaSerializer, *, out_frame_ms: int
) -> FastAPIWebsocketParams:
    """Transport parameters for a Twilio call: 8 kHz out in ``out_frame_ms`` frames (one
    ``media`` message each; ``twilio.out_frame_ms``), 16 kHz in."""
    if out_frame_ms % 10 or not 20 <= out_frame_ms <= 200:
        raise ValueError("out_frame_ms must be a multiple of 10 from 20 to 200")
    return FastAPIWebsocketParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_sample_rate=16000,
        audio_out_sample_rate=TWILIO_RATE,
        audio_out_10ms_chunks=out_frame_ms // 10,
        add_wav_header=False,
        serializer=serializer,
        allowed_origins=[],
    )
