"""Phone calls through Twilio: the media-stream serializer, the mark gate and the transport.

A call runs over one Media Streams websocket (the webhook side is in
``twilio_webhook``). What the caller has actually
heard is tracked with marks: each spoken chunk's text is held back from the LLM
context until Twilio echoes the mark sent after its audio, so on barge-in (when
voxline sends ``clear``) the context keeps only the words that were played.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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
    StartFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

from voxline.transports.playout import HeardTextGate
from voxline.transports.twilio_protocol import (
    DTMF,
    Mark,
    Media,
    ProtocolError,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)

TWILIO_RATE = 8000


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
    """

    stream_sid: str
    call_sid: str
    events: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))
    dropped: deque[str] = field(default_factory=lambda: deque(maxlen=1000))
    audio_outstanding: bool = False
    on_mark: Callable[[str], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None


class TwilioMediaSerializer(FrameSerializer):
    """Frames to and from Twilio Media Streams messages.

    Every inbound event is handled: ``media`` becomes input audio (µ-law 8 kHz to
    16-bit PCM at the pipeline rate), ``dtmf`` a keypad frame, ``mark`` echoes go
    to the mark gate, ``stop`` ends the call. A malformed message is logged and
    dropped; it never ends the call.
    """

    def __init__(self, stream: TwilioStream, **kwargs):
        super().__init__(**kwargs)
        self.stream = stream
        self._in_rate = 16000
        self._out_rate = TWILIO_RATE
        self._in_resampler = create_stream_resampler()
        self._out_resampler = create_stream_resampler()

    async def setup(self, frame: StartFrame):
        """Learn the pipeline's audio rates."""
        await super().setup(frame)
        self._in_rate = frame.audio_in_sample_rate
        self._out_rate = frame.audio_out_sample_rate

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
        try:
            message = parse_message(data)
            if isinstance(message, Media):
                audio = message.audio()
        except ProtocolError as exc:
            self.stream.dropped.append(str(exc))
            logger.warning(f"twilio stream {self.stream.stream_sid}: dropped message: {exc}")
            return None
        self.stream.events.append(message.event)
        if isinstance(message, Media):
            if not audio:
                return None
            pcm = await ulaw_to_pcm(audio, TWILIO_RATE, self._in_rate, self._in_resampler)
            return InputAudioRawFrame(audio=pcm, sample_rate=self._in_rate, num_channels=1)
        if isinstance(message, DTMF):
            return InputDTMFFrame(button=KeypadEntry(message.dtmf.digit))
        if isinstance(message, Mark):
            if self.stream.on_mark is not None:
                await self.stream.on_mark(message.mark.name)
            return None
        if isinstance(message, Stop):
            logger.info(f"twilio stream {self.stream.stream_sid}: stop")
            if self.stream.on_stop is not None:
                await self.stream.on_stop()
            return None
        return None  # connected / a repeated start: nothing to push


class MarkGate(HeardTextGate):
    """Holds each spoken chunk's text until Twilio confirms its audio played.

    The output transport pushes a chunk's ``TTSTextFrame`` right after writing
    the chunk's audio; the gate sends a mark there and holds the text (and every
    later downstream frame, to keep their order) until the mark is echoed. On an
    interruption the unconfirmed texts are dropped, so the assistant's turn in
    the LLM context ends with the last words the caller heard. The holding and
    ordering are :class:`~voxline.transports.playout.HeardTextGate`'s.
    """

    def __init__(
        self,
        send_mark: Callable[[str], Awaitable[None]],
        on_drained: Callable[[], None] | None = None,
    ):
        super().__init__(on_drained)
        self._send_mark = send_mark
        self._sequence = 0

    def _key(self, frame: TTSTextFrame) -> object:
        self._sequence += 1
        return f"chunk-{self._sequence}"

    async def _after_hold(self, key: object) -> None:
        await self._send_mark(str(key))

    async def on_mark(self, name: str) -> None:
        """Release everything up to and including the chunk whose mark was echoed."""
        keys = self._held_keys()
        if name not in keys:
            return  # an echo for audio that was cleared
        await self._release_texts(keys.index(name) + 1)


class TwilioOutputTransport(FastAPIWebsocketOutputTransport):
    """The websocket output transport with a :class:`MarkGate` on its downstream side."""

    def __init__(self, *args, gate: MarkGate, **kwargs):
        super().__init__(*args, **kwargs)
        self._gate = gate
        gate.bind(self._release)

    async def _release(self, frame: Frame) -> None:
        await super().push_frame(frame, FrameDirection.DOWNSTREAM)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Hold frames behind unconfirmed chunks; everything else flows as usual."""
        if direction == FrameDirection.DOWNSTREAM and await self._gate.admit(frame):
            return
        await super().push_frame(frame, direction)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """On barge-in, drop unplayed text before ``clear`` goes out."""
        if isinstance(frame, InterruptionFrame):
            await self._gate.interrupt()
        await super().process_frame(frame, direction)


class TwilioTransport(FastAPIWebsocketTransport):
    """pipecat's FastAPI websocket transport speaking Twilio Media Streams with marks."""

    def __init__(self, websocket, stream: TwilioStream, *, params: FastAPIWebsocketParams):
        super().__init__(websocket, params)
        self.stream = stream
        self.gate = MarkGate(self._send_mark, on_drained=self._played_all)
        stream.on_mark = self.gate.on_mark
        self._output = TwilioOutputTransport(
            self, self._client, self._params, gate=self.gate, name=self._output_name
        )

    def _played_all(self) -> None:
        self.stream.audio_outstanding = False

    async def _send_mark(self, name: str) -> None:
        await self._client.send(mark_message(self.stream.stream_sid, name))


def twilio_params(serializer: TwilioMediaSerializer) -> FastAPIWebsocketParams:
    """Transport parameters for a Twilio call: 8 kHz out in 20 ms frames, 16 kHz in."""
    return FastAPIWebsocketParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_sample_rate=16000,
        audio_out_sample_rate=TWILIO_RATE,
        audio_out_10ms_chunks=2,
        add_wav_header=False,
        serializer=serializer,
        allowed_origins=[],
    )
