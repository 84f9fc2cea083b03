"""What the caller heard: spoken text reaches the LLM context only once its audio has played.

The output transport pushes each spoken chunk's ``TTSTextFrame`` downstream right
after writing the chunk's audio, and the assistant aggregator (after the
transport) puts that text in the LLM context. A transport that buffers audio
(Twilio's player, an outgoing WebRTC track, a speaker) has not played it yet at
that moment. A gate on the transport's downstream side holds each chunk's text,
and every later downstream frame to keep their order, until the audio written
before it has played; on an interruption the unplayed texts are dropped, so the
assistant's turn in the context ends with the last chunk the caller heard.

:class:`HeardTextGate` is that holding and ordering logic, once. Two gates learn
differently when a chunk has played:

* ``MarkGate`` (``voxline.transports.twilio``): Twilio echoes a mark sent after the
  chunk's audio.
* :class:`PlayoutGate` (here): from the playout position, the seconds of audio
  written to the transport minus the seconds it still holds
  (:class:`PlayoutClock`), compared with how much audio had been written when the
  chunk's text arrived. Browser calls (aiortc) and ``voxline talk`` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from pipecat.frames.frames import (
    CancelFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    SystemFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from voxline.transports.hold import OutputHold


class HeardTextGate:
    """Holds each spoken chunk's text (and every later downstream frame) until it played.

    Subclasses decide what a held text waits for (:meth:`_key`) and call
    :meth:`_release_texts` when chunks have played. ``heard`` lists the released
    texts, ``spoken`` every text admitted (heard or not).

    Args:
        on_drained: called when nothing is held any more after a release.
        hold_audio: hold output audio frames behind a held text too (their order
            relative to the text is then kept exactly); otherwise audio frames,
            pushed after they were written, pass at once.
    """

    def __init__(self, on_drained: Callable[[], None] | None = None, *, hold_audio: bool = True):
        self._on_drained = on_drained
        self._hold_audio = hold_audio
        self._held: deque[tuple[Frame, object | None]] = deque()
        self._release: Callable[[Frame], Awaitable[None]] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lock = asyncio.Lock()
        self.heard: list[str] = []
        self.spoken: list[str] = []
        self.interruptions = 0

    def bind(self, release: Callable[[Frame], Awaitable[None]]) -> None:
        """Where released frames go (the transport's downstream push)."""
        self._release = release

    def next_drain(self) -> asyncio.Future[None]:
        """Resolves when every chunk spoken so far (and the next ones) has played."""
        future = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(future)
        return future

    def mark(self) -> tuple[int, int]:
        """Where the heard texts and the interruptions stand now, for :meth:`wait_heard`."""
        return len(self.heard), self.interruptions

    async def wait_heard(self, text: str, since: tuple[int, int], timeout: float) -> bool:
        """Wait until ``text`` was heard whole after ``since`` (a :meth:`mark`).

        A drain alone is not enough: audio spoken before ``text`` can drain while
        ``text`` is still being synthesized (a busy machine), and a line spoken in
        sentences can drain between them. Returns True once the texts released
        since the mark hold all of ``text``'s words in order, False when an
        interruption dropped unplayed text first or ``timeout`` passed.
        """
        words = _words(text)
        deadline = time.monotonic() + timeout
        while True:
            heard = _words(" ".join(self.heard[since[0] :]))
            if _contains(heard, words):
                return True
            if self.interruptions > since[1]:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.next_drain()), remaining)

    @property
    def holding(self) -> bool:
        """Whether any frame is held."""
        return bool(self._held)

    async def admit(self, frame: Frame) -> bool:
        """Take a downstream frame; False means pass it on now, True means it is held."""
        if isinstance(frame, SystemFrame):
            return False
        if isinstance(frame, TTSTextFrame):
            self.spoken.append(frame.text)
            key = self._key(frame)
            self._held.append((frame, key))
            await self._after_hold(key)
            return True
        if isinstance(frame, OutputAudioRawFrame) and not self._hold_audio:
            return False
        if self._held:
            self._held.append((frame, None))
            return True
        return False

    async def interrupt(self) -> None:
        """Drop unplayed text; keep the order of every other held frame."""
        async with self._lock:
            held, self._held = self._held, deque()
            if any(key is not None for _, key in held):
                self.interruptions += 1
            for frame, key in held:
                if key is None:
                    await self._emit(frame)
            self._resolve_drain_waiters()

    def _held_keys(self) -> list[object]:
        """The keys of the held texts, oldest first."""
        return [key for _, key in self._held if key is not None]

    def _key(self, frame: TTSTextFrame) -> object:
        """What the text waits for (never None); called as it is admitted."""
        raise NotImplementedError

    async def _after_hold(self, key: object) -> None:
        """Hook: a text was just held, waiting for ``key``."""

    async def _release_texts(self, count: int) -> None:
        """Release the oldest ``count`` held texts, the frames before them and after them
        up to the next held text."""
        async with self._lock:
            while self._held and count > 0:
                frame, key = self._held.popleft()
                if key is not None:
                    count -= 1
                    assert isinstance(frame, TTSTextFrame)
                    self.heard.append(frame.text)
                await self._emit(frame)
            while self._held and self._held[0][1] is None:
                await self._emit(self._held.popleft()[0])
            if not self._held:
                if self._on_drained is not None:
                    self._on_drained()
                self._resolve_drain_waiters()

    def _resolve_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _emit(self, frame: Frame) -> None:
        if self._release is not None:
            await self._release(frame)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _contains(words: list[str], part: list[str]) -> bool:
    """Whether ``part`` occurs in ``words`` as a contiguous run."""
    return any(words[i : i + len(part)] == part for i in range(len(words) - len(part) + 1))


class PlayoutClock(Protocol):
    """How far an output transport has played (seconds of audio since the call started)."""

    def written_secs(self) -> float:
        """Seconds of audio handed to the transport so far."""
        ...

    def played_secs(self) -> float:
        """Seconds of audio the caller has heard so far: written minus what is still held."""
        ...


class PlayoutGate(HeardTextGate):
    """Releases each chunk's text once the transport's playout position passes its audio.

    A chunk's text arrives after its audio was written, so its position is the
    transport's :meth:`PlayoutClock.written_secs` at that moment; it is released
    when :meth:`PlayoutClock.played_secs` reaches that position. The transport
    calls :meth:`update` when it has written more audio; the audio it holds plays
    out in real time, so the gate also wakes itself when the oldest held position
    is due.

    Args:
        clock: the transport's playout position.
        on_drained: called when nothing is held any more after a release.
    """

    def __init__(self, clock: PlayoutClock, on_drained: Callable[[], None] | None = None):
        super().__init__(on_drained, hold_audio=False)
        self.clock = clock
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    async def update(self) -> None:
        """Release every text whose audio has played by now."""
        played = self.clock.played_secs()
        due = 0
        for position in self._held_keys():
            assert isinstance(position, float)
            if position > played + 1e-6:
                break
            due += 1
        if due:
            await self._release_texts(due)
        if self._held_keys():
            self._wake.set()

    async def interrupt(self) -> None:
        """Keep the text whose audio has played by now; drop the rest (order kept)."""
        await self.update()
        await super().interrupt()

    async def close(self) -> None:
        """Stop the wake-up timer (the call is over)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None

    def _key(self, frame: TTSTextFrame) -> object:
        return float(self.clock.written_secs())

    async def _after_hold(self, key: object) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._run_timer())
        await self.update()

    async def _run_timer(self) -> None:
        """Wake when the oldest held text's audio should have played."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys = self._held_keys()
            if not keys:
                continue
            position = keys[0]
            assert isinstance(position, float)
            # Held audio plays in real time; audio not yet written is reported by update().
            remaining = min(position, self.clock.written_secs()) - self.clock.played_secs()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            await self.update()


class PlayoutGateMixin:
    """For an output transport (a ``BaseOutputTransport`` subclass): a :class:`PlayoutGate`
    on its downstream side.

    The subclass measures its playout (:class:`PlayoutClock`), calls
    :meth:`_audio_written` after each audio frame it has written, and awaits
    ``hold.wait(frame)`` (:class:`~voxline.transports.hold.OutputHold`) before writing
    one, skipping the frame when it returns False.
    """

    gate: PlayoutGate
    hold: OutputHold

    def _init_gate(self, clock: PlayoutClock) -> None:
        self.gate = PlayoutGate(clock)
        self.gate.bind(self._release_held)
        self.hold = OutputHold()

    async def _release_held(self, frame: Frame) -> None:
        await super().push_frame(frame, FrameDirection.DOWNSTREAM)  # type: ignore[misc]

    async def _audio_written(self) -> None:
        if self.gate.holding:
            await self.gate.update()

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Hold frames behind unplayed chunks' text; everything else flows as usual."""
        if direction == FrameDirection.DOWNSTREAM and await self.gate.admit(frame):
            return
        await super().push_frame(frame, direction)  # type: ignore[misc]

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """On barge-in, drop unplayed text before the interruption goes on."""
        if isinstance(frame, InterruptionFrame):
            await self.gate.interrupt()
        await super().process_frame(frame, direction)  # type: ignore[misc]
        if isinstance(frame, InterruptionFrame):
            self.hold.interrupt()  # after pipecat dropped the queued audio
        if isinstance(frame, CancelFrame):
            await self.gate.close()

    async def cleanup(self):
        """Stop the gate's timer with the transport."""
        await self.gate.close()
        await super().cleanup()  # type: ignore[misc]
