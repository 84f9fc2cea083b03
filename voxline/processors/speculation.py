"""Speculative replies: prepared before the caller's turn ends, heard only after.

pipecat 1.14 answers an eager end of turn (``EagerTranscriptionFrame``) with an
inference against a provisional context, and holds the response *in the LLM
service* until the turn is confirmed, so TTS starts only at the commit. voxline
moves the hold to the audio: the LLM streams as usual, the chunker and TTS
synthesize the first sentence, and :class:`SpeculativeAudioGate`, just before the
output transport, holds everything until the commit. The prepared audio then
plays at once; a withdrawn speculation is dropped at the gate, and its LLM
request and TTS work are stopped where they run.

pipecat's :class:`~pipecat.turns.speculation_gate.SpeculationGate` decides what
to hold; this module hosts it in a different place.
"""

from __future__ import annotations

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EagerEndOfTurnCancelFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.speculation_gate import GatedFrame, SpeculationGate, SpeculationState

from voxline.processors.frames import ReplySpeculationFrame, SpeculationReleasedFrame


class SpeculationTracker(SpeculationGate):
    """pipecat's speculation bookkeeping without the holding.

    The LLM service keeps it to know whether the completion it runs answers an
    unconfirmed turn (and must not run tools yet); the audio gate after TTS does
    the holding, so the reply's first sentence is synthesized before the commit.
    """

    def _begin(self) -> list[GatedFrame]:
        return []


class SpeculativeAudioGate(FrameProcessor):
    """Holds a speculative reply's audio and text until the caller's turn is committed.

    Placed between TTS and the output transport. The LLM service announces each
    completion with a :class:`ReplySpeculationFrame`; a speculative one is held
    from its ``LLMFullResponseStartFrame`` on, released by the
    ``UserStoppedSpeakingFrame`` of the commit, and dropped by an
    ``EagerEndOfTurnCancelFrame`` or an interruption.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._gate = SpeculationGate(name=f"{self}::gate")

    @property
    def holding(self) -> bool:
        """Whether a speculative reply is being held now."""
        return self._gate.state == SpeculationState.HOLDING

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Route every frame through pipecat's speculation gate."""
        await super().process_frame(frame, direction)
        if isinstance(frame, ReplySpeculationFrame):
            self._gate.begin_speculation(frame.speculative)
            return
        ready_secs = self._held_audio_secs() if isinstance(frame, UserStoppedSpeakingFrame) else 0.0
        releasing = isinstance(frame, UserStoppedSpeakingFrame) and self.holding
        for gated, gated_direction in self._gate.process(frame, direction):
            if releasing and gated is not frame:
                releasing = False
                await self.push_frame(SpeculationReleasedFrame(ready_audio_secs=ready_secs))
            await self.push_frame(gated, gated_direction)
        if releasing:
            await self.push_frame(SpeculationReleasedFrame(ready_audio_secs=ready_secs))

    def _held_audio_secs(self) -> float:
        queue = self._gate._buffer  # pipecat's FrameQueue; read-only use
        seconds = 0.0
        for item in list(getattr(queue, "_queue", [])):
            frame = item[0] if isinstance(item, tuple) else item
            if isinstance(frame, TTSAudioRawFrame):
                seconds += frame.num_frames / max(1, frame.sample_rate)
        return round(seconds, 3)


class SpeculativeTTSMixin:
    """Makes a TTS service drop a withdrawn speculation's synthesis, and tells it when a
    speculative reply's audio is held rather than heard.

    ``EagerEndOfTurnCancelFrame`` stops the LLM and the gate drops the reply; the
    text already handed to TTS would still be synthesized for nothing. The
    service treats the withdrawal as an interruption of its own work, but only
    while the bot is silent: speculation never starts while the bot speaks, and
    a line still playing must not lose its rest.

    A speculative reply's audio waits at the gate until the commit, so the time its
    caller runs out of audio counts from the commit, not from when it was made:
    :attr:`_voxline_holding` says the reply being prepared is held, and
    :meth:`on_speculation_released` is called at the commit.
    """

    _voxline_bot_speaking: bool = False
    _voxline_holding: bool = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Watch the bot's speech and the speculation; drop a withdrawn one's synthesis."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._voxline_bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._voxline_bot_speaking = False
        elif isinstance(frame, ReplySpeculationFrame):
            self._voxline_holding = frame.speculative
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._voxline_holding:
            self._voxline_holding = False
            self.on_speculation_released()
        elif isinstance(frame, EagerEndOfTurnCancelFrame):
            self._voxline_holding = False
            if not self._voxline_bot_speaking:
                await self._start_interruption()  # type: ignore[attr-defined]
                await self._handle_interruption(InterruptionFrame(), direction)  # type: ignore[attr-defined]
        await super().process_frame(frame, direction)  # type: ignore[misc]

    def on_speculation_released(self) -> None:
        """The turn was committed: the held reply's audio starts playing now."""
