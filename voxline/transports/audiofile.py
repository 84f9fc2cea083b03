"""A transport that plays an audio file as the caller and records the bot.

``voxline talk`` uses it to run a whole call without a phone or a browser: the
caller's audio is fed into the pipeline as 20 ms frames paced in real time (as a
microphone would send them, silence before and after), and every audio frame
the bot sends out is placed on the call's timeline, so the recording sounds like
what the caller heard. The input side knows exactly when the caller's speech
ends, which is what voice-to-voice latency is measured from.
"""

from __future__ import annotations

import asyncio
import bisect

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from voxline.transports.levels import is_voiced
from voxline.transports.playout import PlayoutGateMixin

FRAME_SECS = 0.02


class AudioFileInput(BaseInputTransport):
    """Feeds the caller's audio into the call in real time, then silence."""

    def __init__(self, transport: AudioFileTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._feed_task: asyncio.Task | None = None

    async def start(self, frame: StartFrame):
        """Start feeding audio once the pipeline starts."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._feed_task is None:
            self._feed_task = self.create_task(self._feed())

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

    async def _feed(self):
        transport = self._transport
        rate = self.sample_rate
        samples_per_frame = int(rate * FRAME_SECS)
        audio = transport.caller_audio(rate)
        silence = bytes(samples_per_frame * 2)
        tail_frames = int(transport.tail_secs / FRAME_SECS)
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        position = 0
        sent = 0
        after_end = 0
        while True:
            # Pace like a sound card: frame n leaves at start + n * 20 ms.
            await asyncio.sleep(max(0.0, started_at + sent * FRAME_SECS - loop.time()))
            sent += 1
            chunk = silence
            if position >= audio.size and transport.has_next_clip():
                audio, position, after_end = transport.next_clip(rate), 0, 0
            if transport.caller_may_speak.is_set() and position < audio.size:
                piece = audio[position : position + samples_per_frame]
                position += samples_per_frame
                chunk = piece.tobytes().ljust(samples_per_frame * 2, b"\0")
                if is_voiced(piece):
                    transport.note_voiced(self.get_clock().get_time())
            elif position >= audio.size:
                after_end += 1
                if after_end == 1 and transport.caller_may_speak.is_set():
                    transport.note_clip_end()
                if after_end == tail_frames:
                    transport.caller_finished.set()
            await self.push_audio_frame(
                InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1)
            )


class AudioFileOutput(PlayoutGateMixin, BaseOutputTransport):
    """Plays the bot's audio in real time and records it on the call's timeline.

    The speaker is modelled exactly: a frame starts when the one before it ends,
    so the playout position (:meth:`played_secs`) is the audio written minus what
    is still queued for the speaker; a :class:`~voxline.transports.playout.PlayoutGate`
    lets each chunk's text into the context only once that position passes it.
    """

    def __init__(self, transport: AudioFileTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._next_write = 0.0
        self._written = 0.0
        self._init_gate(self)

    def written_secs(self) -> float:
        """Seconds of bot audio handed to the speaker."""
        return self._written

    def played_secs(self) -> float:
        """Seconds of bot audio the caller has heard: written minus still queued."""
        queued = max(0.0, self._next_write - asyncio.get_running_loop().time())
        return max(0.0, self._written - queued)

    async def start(self, frame: StartFrame):
        """Ready to play once the pipeline starts."""
        await super().start(frame)
        self._transport.out_sample_rate = self.sample_rate
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Record the frame where it plays, pacing like a speaker (returns as it starts)."""
        if not await self.hold.wait(frame):
            return False
        self._transport.record(self.get_clock().get_time(), frame.audio)
        loop = asyncio.get_running_loop()
        duration = frame.num_frames / max(1, frame.sample_rate)
        now = loop.time()
        starts = max(now, self._next_write)
        self._next_write = starts + duration
        self._written += duration
        clock_secs = self.get_clock().get_time() / 1e9 + (starts - now)
        self._transport.note_played(clock_secs, duration)
        if starts > now:
            await asyncio.sleep(starts - now)
        await self._audio_written()
        return True


class AudioFileTransport(BaseTransport):
    """A call whose caller is an audio clip.

    Args:
        audio: the caller's audio, mono float samples in [-1, 1].
        sample_rate: the clip's sample rate.
        tail_secs: silence after the clip before ``caller_finished`` is set (give the
            VAD time to notice the end of speech).
        params: transport parameters (audio in/out must be enabled).
    """

    def __init__(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        params: TransportParams,
        tail_secs: float = 1.5,
    ):
        super().__init__()
        self._audio = np.asarray(audio, dtype=np.float32)
        self._rate = sample_rate
        self._params = params
        self.tail_secs = tail_secs
        self.out_sample_rate = params.audio_out_sample_rate or 24_000
        self.caller_may_speak = asyncio.Event()
        self.caller_finished = asyncio.Event()
        self._voiced: list[int] = []
        self._next_clips: list[np.ndarray] = []
        self._played: list[tuple[float, float]] = []
        self._played_event = asyncio.Event()
        self.played_at_clip_end = 0.0
        """Seconds of bot audio played when the caller's latest clip ended (its tail aside)."""
        self._recorded: list[tuple[int, bytes]] = []
        self._input: AudioFileInput | None = None
        self._output: AudioFileOutput | None = None

    def input(self) -> FrameProcessor:
        """The caller's side: the clip, paced in real time."""
        if self._input is None:
            self._input = AudioFileInput(self, self._params, name="audio-file-input")
        return self._input

    def output(self) -> AudioFileOutput:
        """The bot's side: recorded."""
        if self._output is None:
            self._output = AudioFileOutput(self, self._params, name="audio-file-output")
        return self._output

    def caller_audio(self, rate: int) -> np.ndarray:
        """The clip as 16-bit samples at ``rate``."""
        audio = self._audio
        if rate != self._rate:
            import soxr

            audio = soxr.resample(audio, self._rate, rate)
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)

    def say(self, audio: np.ndarray) -> None:
        """The caller says ``audio`` (at the clip's rate) once what it is saying ends.

        ``caller_finished`` is cleared: it is set again after this clip's tail.
        """
        self._next_clips.append(np.asarray(audio, dtype=np.float32))
        self.caller_finished.clear()

    def has_next_clip(self) -> bool:
        """Whether :meth:`say` queued another clip."""
        return bool(self._next_clips)

    def next_clip(self, rate: int) -> np.ndarray:
        """The next queued clip as 16-bit samples at ``rate``."""
        audio = self._next_clips.pop(0)
        if rate != self._rate:
            import soxr

            audio = soxr.resample(audio, self._rate, rate)
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)

    def note_played(self, starts: float, duration: float) -> None:
        """The speaker plays ``duration`` seconds of bot audio from ``starts`` (pipeline clock)."""
        self._played.append((starts, duration))
        self._played_event.set()

    def played_frames(self) -> list[tuple[float, float]]:
        """Every bot frame played: (start, duration) in seconds, on the pipeline clock."""
        return list(self._played)

    def caller_voiced_secs(self) -> list[float]:
        """When each voiced caller frame was sent, in seconds on the pipeline clock."""
        return [clock_ns / 1e9 for clock_ns in self._voiced]

    def note_clip_end(self) -> None:
        """The caller's clip has ended: what has played so far came before the answer."""
        self.played_at_clip_end = self.played_secs()

    def played_secs(self) -> float:
        """Seconds of bot audio played (or playing) so far."""
        return sum(duration for _, duration in self._played)

    async def wait_played(self, secs: float) -> None:
        """Return once ``secs`` seconds of bot audio have started playing."""
        while self.played_secs() < secs:
            self._played_event.clear()
            await self._played_event.wait()

    def note_voiced(self, clock_ns: int) -> None:
        """Remember that caller speech was sent at ``clock_ns``."""
        self._voiced.append(clock_ns)

    def speech_end_at(self, vad_stop_ns: int, stop_secs: float) -> int | None:
        """When the last voiced caller frame before a VAD stop ended (pipeline clock)."""
        index = bisect.bisect_right(self._voiced, vad_stop_ns)
        if index == 0:
            return None
        return self._voiced[index - 1] + int(FRAME_SECS * 1e9)

    def record(self, clock_ns: int, audio: bytes) -> None:
        """Keep one frame of bot audio with the time it was played."""
        self._recorded.append((clock_ns, audio))

    def recording(self) -> np.ndarray:
        """The bot's audio as heard, int16 at :attr:`out_sample_rate`, silence between."""
        rate = self.out_sample_rate
        pieces: list[np.ndarray] = []
        length = 0
        for clock_ns, audio in self._recorded:
            samples = np.frombuffer(audio, dtype=np.int16)
            start = max(length, round(clock_ns * rate / 1e9))
            if start > length:
                pieces.append(np.zeros(start - length, dtype=np.int16))
            pieces.append(samples)
            length = start + samples.size
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
