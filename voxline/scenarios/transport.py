"""The scenario's caller: a transport that speaks turns on cue and records what it hears.

Like ``voxline talk``'s audio-file transport, caller audio goes in as 20 ms frames
paced in real time (silence between turns) and the bot's audio is played out and
recorded on the call's clock. Unlike it, the caller is driven turn by turn: the
scenario hands it a clip to say (possibly over the bot), keypad digits to press,
or nothing; and what the bot played can be cut out by time, so each turn's
reply is the audio the caller heard between its turn and the next.

Also here: the call control a scenario gives the built-in tools (hang-ups and
transfers are noted, not carried out on a phone line), the runner that answers a
tool from a fixture, and an observer that notes every tool call with its time.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    StartFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_transport import TransportParams

from voxline.bot.call_control import PipelineCallControl
from voxline.tools.runner import ToolRunner
from voxline.transports.audiofile import FRAME_SECS, AudioFileTransport
from voxline.transports.levels import is_voiced


@dataclass
class Spoken:
    """When a caller action happened on the call's clock (seconds)."""

    started: float
    ended: float
    """The last voiced frame's end (speech) or the last key press (DTMF)."""


class ScenarioInput(BaseInputTransport):
    """Sends the caller's clips and key presses when the scenario asks, silence otherwise."""

    def __init__(self, transport: ScenarioTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._feed_task: asyncio.Task | None = None

    async def start(self, frame: StartFrame):
        """Start the caller's microphone with the pipeline."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._feed_task is None:
            self._feed_task = self.create_task(self._feed())
        self._transport.started.set()

    async def stop(self, frame: EndFrame):
        """Stop the microphone."""
        await self._stop_feed()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame):
        """Stop the microphone at once."""
        await self._stop_feed()
        await super().cancel(frame)

    async def _stop_feed(self):
        if self._feed_task is not None:
            await self.cancel_task(self._feed_task)
            self._feed_task = None

    def clock_secs(self) -> float:
        """The call's clock now, in seconds."""
        return self.get_clock().get_time() / 1e9

    async def _feed(self):
        transport = self._transport
        rate = self.sample_rate
        per_frame = int(rate * FRAME_SECS)
        silence = bytes(per_frame * 2)
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        sent = 0
        while True:
            # Pace like a sound card: frame n leaves at start + n * 20 ms.
            await asyncio.sleep(max(0.0, started_at + sent * FRAME_SECS - loop.time()))
            sent += 1
            if transport.keys:
                key = transport.keys.pop(0)
                await self.push_frame(InputDTMFFrame(button=KeypadEntry(key)))
                transport.action_progress(self.clock_secs(), voiced=True, done=not transport.keys)
            chunk = silence
            clip = transport.clip
            if clip is not None:
                piece = clip[transport.position : transport.position + per_frame]
                transport.position += per_frame
                chunk = piece.tobytes().ljust(per_frame * 2, b"\0")
                voiced = is_voiced(piece)
                if voiced:
                    transport.note_voiced(self.get_clock().get_time())
                transport.action_progress(
                    self.clock_secs(), voiced=voiced, done=transport.position >= clip.size
                )
            await self.push_audio_frame(
                InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1)
            )


class ScenarioTransport(AudioFileTransport):
    """A call whose caller follows a scenario, turn by turn."""

    def __init__(self, *, params: TransportParams):
        super().__init__(np.zeros(0, dtype=np.float32), params.audio_in_sample_rate or 16_000,
                         params=params)  # fmt: skip
        self.started = asyncio.Event()
        self.clip: np.ndarray | None = None
        self.position = 0
        self.keys: list[str] = []
        self._action_started: float | None = None
        self._action_last: float | None = None
        self._action_done = asyncio.Event()
        self._scenario_input: ScenarioInput | None = None

    def input(self) -> FrameProcessor:
        """The caller's side, driven by :meth:`say` and :meth:`press`."""
        if self._scenario_input is None:
            self._scenario_input = ScenarioInput(self, self._params, name="scenario-caller")
        return self._scenario_input

    def clock_secs(self) -> float:
        """The call's clock now (seconds; 0 before the pipeline starts)."""
        return 0.0 if self._scenario_input is None else self._scenario_input.clock_secs()

    def action_progress(self, now: float, *, voiced: bool, done: bool) -> None:
        """The input sent one more frame (or key) of the current action."""
        if self._action_started is None:
            self._action_started = now
        if voiced:
            self._action_last = now + FRAME_SECS
        if done:
            self.clip = None
            self._action_done.set()

    async def _run_action(self) -> Spoken:
        await self._action_done.wait()
        started = self._action_started if self._action_started is not None else self.clock_secs()
        last = self._action_last if self._action_last is not None else started
        return Spoken(started=started, ended=last)

    def partial_action(self) -> Spoken | None:
        """The action in progress, if it had started (a call can end while the caller talks)."""
        if self._action_done.is_set() or self._action_started is None:
            return None
        last = self._action_last if self._action_last is not None else self._action_started
        return Spoken(started=self._action_started, ended=last)

    def _begin(self) -> None:
        self._action_started = self._action_last = None
        self._action_done.clear()

    async def say(self, audio: np.ndarray, rate: int) -> Spoken:
        """Say ``audio`` (mono float at ``rate``) now; returns once it has all been sent."""
        import soxr

        target = self._params.audio_in_sample_rate or 16_000
        samples = audio if rate == target else soxr.resample(audio, rate, target)
        self._begin()
        self.position = 0
        self.clip = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
        return await self._run_action()

    async def press(self, digits: str) -> Spoken:
        """Press keypad keys, one per 20 ms frame; returns once all are sent."""
        self._begin()
        self.keys = list(digits)
        return await self._run_action()

    def heard(self, start: float, end: float | None) -> np.ndarray:
        """The bot's audio that started playing in [start, end) on the call's clock,
        int16 at :attr:`out_sample_rate` (what the caller heard then, cut where it was cut)."""
        pieces = [
            np.frombuffer(audio, dtype=np.int16)
            for (_, audio), (starts, _) in zip(self._recorded, self._played, strict=False)
            if starts >= start and (end is None or starts < end)
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)

    def first_voiced_after(self, moment: float) -> float | None:
        """When the first voiced bot frame after ``moment`` started playing."""
        for (_, audio), (starts, _) in zip(self._recorded, self._played, strict=False):
            if starts >= moment and is_voiced(np.frombuffer(audio, dtype=np.int16)):
                return starts
        return None

    async def wait_voiced_after(self, moment: float) -> None:
        """Return once a voiced bot frame has started playing after ``moment``."""
        while self.first_voiced_after(moment) is None:
            self._played_event.clear()
            await self._played_event.wait()

    async def wait_quiet(self, secs: float) -> None:
        """Return once the bot has played nothing for ``secs`` seconds."""
        while True:
            now = self.clock_secs()
            last_end = max((start + length for start, length in self._played), default=0.0)
            if now - last_end >= secs:
                return
            await asyncio.sleep(secs - (now - last_end))  # the quiet being measured

    def played_since(self, moment: float) -> float:
        """Seconds of bot audio that started playing after ``moment``."""
        return sum(duration for starts, duration in self._played if starts >= moment)

    async def wait_played_since(self, moment: float, secs: float) -> None:
        """Return once ``secs`` seconds of bot audio after ``moment`` have started playing."""
        while self.played_since(moment) < secs:
            self._played_event.clear()
            await self._played_event.wait()


class ScenarioCallControl(PipelineCallControl):
    """Built-in tools in a scenario: hang-ups end the call, transfers and keys are noted."""

    def __init__(self, goodbye: str, transport: ScenarioTransport, *, interruptible: bool = True):
        super().__init__(goodbye, interruptible=interruptible)
        self._transport = transport
        self.ended_at: float | None = None
        self.transferred: list[tuple[float, str]] = []
        self.pressed: list[tuple[float, str]] = []

    async def end_call(self, goodbye: str = "") -> None:
        """Note the hang-up, then say goodbye and end the call."""
        self.ended_at = self._transport.clock_secs()
        await super().end_call(goodbye)

    async def transfer_call(self, number: str) -> None:
        """Note the transfer; the call ends once the transfer line has played."""
        self.transferred.append((self._transport.clock_secs(), number))
        if self.ended_at is None:
            self.ended_at = self._transport.clock_secs()
        if self.worker is not None:
            await self.worker.queue_frame(EndFrame())

    async def send_dtmf(self, digits: str) -> None:
        """Note the keys the bot pressed."""
        self.pressed.append((self._transport.clock_secs(), digits))


class FixtureRunner(ToolRunner):
    """A YAML tool that answers with a scenario's fixture instead of running its handler.

    The LLM's arguments are still checked against the tool's schema first, as in a call.
    """

    def __init__(self, runner: ToolRunner, result: Any):
        self.__dict__.update(runner.__dict__)
        self._fixture = result

    async def _call(self, arguments: dict[str, Any]) -> Any:
        return copy.deepcopy(self._fixture)


@dataclass
class ToolCall:
    """A tool the bot called, when its result came back (call clock, seconds)."""

    at: float
    name: str
    arguments: dict[str, Any]
    result: Any


class ToolCallLog(BaseObserver):
    """Notes every tool call's result as it leaves the LLM, with its time."""

    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.calls: list[ToolCall] = []
        self._seen: set[str] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        """Keep each tool result once (a frame is pushed again at every processor)."""
        frame = data.frame
        # One result per tool call: pipecat pushes it both ways, as two frames.
        if isinstance(frame, FunctionCallResultFrame) and frame.tool_call_id not in self._seen:
            self._seen.add(frame.tool_call_id)
            arguments = frame.arguments if isinstance(frame.arguments, dict) else {}
            self.calls.append(ToolCall(data.timestamp / 1e9, frame.function_name, arguments,
                                       frame.result))  # fmt: skip
