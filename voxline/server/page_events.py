"""What a browser call's page hears on its data channel: transcripts, turns, latencies."""

from __future__ import annotations

import time

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
    TranscriptionFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

from voxline.processors.turn_trace import TurnTrace


class PageEvents(BaseObserver):
    """Tells the page, over the data channel, what happens in the call.

    Also notes when the browser's audio last arrived, for the vanished-peer watchdog.
    """

    def __init__(self, connection: SmallWebRTCConnection):
        super().__init__(observe_every_push=False)
        self._connection = connection
        self.last_audio = time.monotonic()

    def send(self, message: dict) -> None:
        """Queue one JSON message for the page (buffered until the channel opens)."""
        self._connection.send_app_message({"source": "voxline", **message})

    async def on_push_frame(self, data: FramePushed) -> None:
        """Forward transcripts, spoken text and turn boundaries."""
        frame = data.frame
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, InputAudioRawFrame):
            self.last_audio = time.monotonic()
        elif isinstance(frame, TranscriptionFrame):
            self.send({"type": "user-transcript", "text": frame.text})
        elif isinstance(frame, TTSTextFrame):
            self.send({"type": "bot-text", "text": frame.text})
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self.send({"type": "user-started"})
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self.send({"type": "user-stopped"})
        elif isinstance(frame, BotStartedSpeakingFrame):
            self.send({"type": "bot-started"})
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.send({"type": "bot-stopped"})

    def turn(self, turn: TurnTrace) -> None:
        """Send a finished turn with the latency of each stage."""
        self.send({"type": "turn", **turn.as_dict()})
