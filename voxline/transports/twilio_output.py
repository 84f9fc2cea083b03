"""What goes out to Twilio: the mark gate and the paced, holdable output transport.

:class:`MarkGate` holds each spoken chunk's text until Twilio confirms its audio played.
:class:`TwilioOutputTransport` is pipecat's websocket output with that gate on its
downstream side, an :class:`~voxline.transports.hold.OutputHold` before each audio write,
and writes paced by :class:`~voxline.transports.send_ahead.SendAhead`, whose model of
Twilio's playout also tells when the caller ran out of the bot's audio in mid-speech: an
underrun, reported through ``on_underrun``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.websocket.fastapi import FastAPIWebsocketOutputTransport

from voxline.transports.hold import OutputHold
from voxline.transports.playout import HeardTextGate
from voxline.transports.send_ahead import SendAhead

UNDERRUN_SECS = 0.06
"""A gap in the bot's speech this long is reported: three phone frames, which a caller
hears (the same threshold as the benchmarks' callers)."""


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
    """The websocket output transport with a :class:`MarkGate` on its downstream side,
    an :class:`~voxline.transports.hold.OutputHold` before each audio write, and
    writes paced by :class:`~voxline.transports.send_ahead.SendAhead`.

    Attributes:
        on_underrun: called with the seconds of each gap of at least
            :data:`UNDERRUN_SECS` the caller heard inside one stretch of the bot's
            speech (from its start to pipecat's "bot stopped speaking"), except
            across a hold (the bot fell silent for the caller on purpose).
    """

    def __init__(self, *args, gate: MarkGate, send_ahead_secs: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._gate = gate
        self.hold = OutputHold()
        self.pacer = SendAhead(send_ahead_secs)
        self.on_underrun: Callable[[float], None] | None = None
        self._holds_seen = 0
        self._speaking = False
        gate.bind(self._release)

    async def _write_audio_sleep(self):
        """Wait only while more than the lead is still to play at Twilio (the module
        :mod:`~voxline.transports.send_ahead` says why pipecat's sleep is replaced)."""
        wait = self.pacer.wrote(self._send_interval)
        if wait > 0:
            await asyncio.sleep(wait)  # pacing to the caller's playout clock

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Send the frame to Twilio, once the caller is not possibly barging in."""
        if not await self.hold.wait(frame):
            return False
        if self.hold.holds != self._holds_seen:
            self._holds_seen = self.hold.holds
            self.pacer.begin_stretch()  # the quiet of a hold is no underrun
        written = await super().write_audio_frame(frame)
        gap = self.pacer.gap_secs
        if written and self._speaking and gap >= UNDERRUN_SECS and self.on_underrun is not None:
            self.on_underrun(gap)
        return written

    async def _release(self, frame: Frame) -> None:
        await super().push_frame(frame, FrameDirection.DOWNSTREAM)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Hold frames behind unconfirmed chunks; everything else flows as usual."""
        if isinstance(frame, BotStartedSpeakingFrame):
            # Pushed just before the first frame of a stretch of speech is written.
            self._speaking = True
            self.pacer.begin_stretch()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._speaking = False  # what follows (the silence after an EndFrame) is no speech
        if direction == FrameDirection.DOWNSTREAM and await self._gate.admit(frame):
            return
        await super().push_frame(frame, direction)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """On barge-in, drop unplayed text before ``clear`` goes out."""
        if isinstance(frame, InterruptionFrame):
            await self._gate.interrupt()
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.pacer.reset()  # the serializer sent clear: Twilio holds nothing now
            self.hold.interrupt()  # after pipecat dropped the queued audio
