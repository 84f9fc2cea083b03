"""Twilio Media Streams messages, as pydantic models that mirror the protocol.

From Twilio: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``.
To Twilio (text frames only): ``media``, ``mark``, ``clear``. A message that does
not parse is reported as :class:`ProtocolError` with the reason, so the caller
can log it and drop it without ending the call.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Twilio sends 20 ms (160 bytes) per media message; anything far larger is not audio we expect.
MAX_MEDIA_BYTES = 1600


class ProtocolError(ValueError):
    """A message from Twilio that cannot be used; the message says why."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class MediaFormat(_Message):
    encoding: str = "audio/x-mulaw"
    sample_rate: int = Field(8000, alias="sampleRate")
    channels: int = 1


# Twilio's ids are two letters and 32 hex digits; anything printable and short is accepted,
# nothing that could break a log line (new lines, control characters, lone surrogates).
_SID = r"^[A-Za-z0-9_.-]{1,64}$"


class StartInfo(_Message):
    stream_sid: str = Field(alias="streamSid", pattern=_SID)
    account_sid: str = Field("", alias="accountSid", max_length=64)
    call_sid: str = Field(alias="callSid", pattern=_SID)
    tracks: list[str] = Field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(default_factory=MediaFormat, alias="mediaFormat")


class MediaInfo(_Message):
    payload: str
    timestamp: int | str | None = None
    chunk: int | str | None = None
    track: str = "inbound"


class DTMFInfo(_Message):
    digit: str = Field(pattern=r"^[0-9*#A-D]$")
    track: str = "inbound_track"


class MarkInfo(_Message):
    name: str


class Connected(_Message):
    event: Literal["connected"]
    protocol: str = "Call"


class _StreamMessage(_Message):
    """Every message after ``connected`` names its stream."""

    stream_sid: str = Field("", alias="streamSid")


class Start(_StreamMessage):
    event: Literal["start"]
    start: StartInfo


class Media(_StreamMessage):
    event: Literal["media"]
    media: MediaInfo

    def audio(self) -> bytes:
        """The µ-law payload, decoded.

        Raises:
            ProtocolError: invalid base64 or an oversized payload.
        """
        try:
            audio = base64.b64decode(self.media.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"media payload is not valid base64: {exc}") from None
        if len(audio) > MAX_MEDIA_BYTES:
            raise ProtocolError(f"media payload of {len(audio)} bytes (at most {MAX_MEDIA_BYTES})")
        return audio


class DTMF(_StreamMessage):
    event: Literal["dtmf"]
    dtmf: DTMFInfo


class Mark(_StreamMessage):
    event: Literal["mark"]
    mark: MarkInfo


class Stop(_StreamMessage):
    event: Literal["stop"]


TwilioMessage = Annotated[
    Connected | Start | Media | DTMF | Mark | Stop, Field(discriminator="event")
]
_MESSAGE = TypeAdapter(TwilioMessage)
EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")


def parse_message(data: str | bytes) -> Connected | Start | Media | DTMF | Mark | Stop:
    """Parse one websocket message from Twilio.

    Raises:
        ProtocolError: a binary frame, invalid JSON, an unknown event or missing fields.
    """
    if isinstance(data, bytes):
        raise ProtocolError(f"binary frame of {len(data)} bytes (Twilio sends text frames only)")
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit limit
        raise ProtocolError(f"invalid JSON: {str(exc)[:80]}") from None
    if not isinstance(document, dict):
        raise ProtocolError("a message must be a JSON object")
    event = document.get("event")
    if event not in EVENTS:
        raise ProtocolError(f"unknown event {event!r}")
    try:
        return _MESSAGE.validate_python(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"][1:])
        raise ProtocolError(f"{event} message: {where}: {first['msg']}") from None


def media_message(stream_sid: str, mulaw: bytes) -> str:
    """An outbound ``media`` message carrying µ-law audio."""
    payload = base64.b64encode(mulaw).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    """An outbound ``mark``: Twilio echoes it once the audio sent before it has played."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """An outbound ``clear``: Twilio drops the audio it has buffered (barge-in)."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})
