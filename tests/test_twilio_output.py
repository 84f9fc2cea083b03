"""The phone output's underruns: a gap inside the bot's speech is reported, the quiet
before a stretch of speech and the bot held for a possible barge-in are not."""

from __future__ import annotations

import json

import pytest
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    OutputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.utils.asyncio.task_manager import TaskManager

from tests.fake_clock import FakeClock
from voxline.transports.send_ahead import SendAhead
from voxline.transports.twilio import (
    TWILIO_RATE,
    TwilioMediaSerializer,
    TwilioStream,
    twilio_params,
)
from voxline.transports.twilio_output import UNDERRUN_SECS, MarkGate, TwilioOutputTransport

FRAME_SECS = 0.06
LEAD_SECS = 0.12


class Websocket:
    """pipecat's websocket client as the output uses it: connected, recording what is sent."""

    is_closing = False
    is_connected = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def setup(self, _setup: FrameProcessorSetup) -> None:
        pass

    async def send(self, data: str) -> None:
        self.sent.append(data)


class Output:
    """A Twilio output on a hand-moved clock, and the underruns it reported."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.websocket = Websocket()
        self.underruns: list[float] = []
        stream = TwilioStream(stream_sid="MZ1", call_sid="CA1")
        params = twilio_params(TwilioMediaSerializer(stream), out_frame_ms=60)

        async def send_mark(_name: str) -> None:
            pass

        self.transport = TwilioOutputTransport(
            None, self.websocket, params, gate=MarkGate(send_mark), send_ahead_secs=LEAD_SECS
        )
        self.transport.pacer = SendAhead(LEAD_SECS, self.clock)
        self.transport.on_underrun = self.underruns.append

    async def start(self) -> None:
        setup = FrameProcessorSetup(
            clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None
        )
        await self.transport.setup(setup)

    async def speak(self, frames: int) -> None:
        """Write ``frames`` frames, the clock moving as the pacer asks (no real waiting)."""
        for _ in range(frames):
            audio = bytes(int(FRAME_SECS * TWILIO_RATE) * 2)
            frame = OutputAudioRawFrame(audio=audio, sample_rate=TWILIO_RATE, num_channels=1)
            ahead = self.transport.pacer.ahead_secs()
            # The pacer would sleep until the reserve is down to the lead; move there.
            self.clock.now += max(0.0, ahead - LEAD_SECS)
            assert await self.transport.write_audio_frame(frame)

    async def starts_speaking(self) -> None:
        await self.transport.push_frame(BotStartedSpeakingFrame())

    async def stops_speaking(self) -> None:
        await self.transport.push_frame(BotStoppedSpeakingFrame())


async def test_a_late_frame_inside_speech_is_an_underrun_of_the_gap_heard():
    output = Output()
    await output.start()
    await output.starts_speaking()
    await output.speak(5)
    assert output.underruns == []
    # The next sentence comes 0.3 s after the caller's reserve ran out.
    output.clock.now += output.transport.pacer.ahead_secs() + 0.3
    await output.speak(3)
    assert output.underruns == [pytest.approx(0.3)]
    sent = [json.loads(message)["event"] for message in output.websocket.sent]
    assert sent == ["media"] * 8


async def test_a_gap_shorter_than_the_threshold_is_not_reported():
    output = Output()
    await output.start()
    await output.starts_speaking()
    await output.speak(3)
    output.clock.now += output.transport.pacer.ahead_secs() + UNDERRUN_SECS / 2
    await output.speak(1)
    assert output.underruns == []


async def test_the_quiet_before_a_stretch_of_speech_is_no_underrun():
    output = Output()
    await output.start()
    await output.starts_speaking()  # the greeting
    await output.speak(4)
    await output.stops_speaking()
    output.clock.now += 5.0  # the caller's turn
    await output.starts_speaking()  # the reply
    await output.speak(4)
    await output.stops_speaking()
    output.clock.now += 3.0
    await output.speak(1)  # the silence pipecat writes after an EndFrame
    assert output.underruns == []


async def test_the_quiet_of_a_hold_is_no_underrun():
    output = Output()
    await output.start()
    await output.starts_speaking()
    await output.speak(4)
    # The caller said "uh-huh": the bot was held, then released, and goes on.
    output.transport.hold.hold()
    output.clock.now += 0.8
    output.transport.hold.release()
    await output.speak(2)
    assert output.underruns == []
    # Later in the same stretch a late frame still counts.
    output.clock.now += output.transport.pacer.ahead_secs() + 0.2
    await output.speak(1)
    assert output.underruns == [pytest.approx(0.2)]
