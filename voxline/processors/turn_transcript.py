"""The caller's words: when the utterance goes to Whisper, and which audio it gets.

With ``turn.speculate`` the utterance goes to the shared Whisper engine halfway to
``early_secs``, or after :data:`IDLE_HEAD_START_SECS` of quiet when Whisper has nothing
else to do, so that its transcript is ready when the pause is confirmed; a caller who
goes on voids it. Whisper gets the audio up to ``early_secs / 2`` after the caller's
last loud frame, then :data:`TRAILING_SILENCE_SECS` of digital silence, whenever the
transcript is asked for (at the head start, at the pause, at the commit), so that the
words, and the reply, do not depend on when that was; a head start on an idle Whisper
sends what it has, ~50 ms of the quiet, and the digital silence stands in for the rest.

:class:`TurnTranscript` is a part of :class:`~voxline.processors.turn.TurnTaker`, kept
here to keep each concern in a module of its own; its methods use the turn-taker's state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADState

from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.processors.turn_state import SAMPLE_RATE, CallerTurn, samples

if TYPE_CHECKING:
    from voxline.processors.turn import TurnTaker

TRAILING_SILENCE_SECS = 0.2
"""Silence after the last word that Whisper gets: enough to finish it."""
IDLE_HEAD_START_SECS = 0.05
"""Quiet after the caller's last loud frame at which the utterance goes to an idle Whisper.

Halfway to ``early_secs`` the VAD has let go of the speech for long enough that a pause
is likely; Whisper then took ~60 ms past the confirmed pause at the median
(``benchmarks/turn_latency.py``), and the LLM waited for it. An idle Whisper can start
sooner: a head start voided by the caller going on costs a worker that had nothing to do,
while a busy one (other calls' words) keeps the later, surer point."""


class TurnTranscript:
    """The turn-taker's requests for transcripts of the caller (module doc)."""

    async def _head_start(self: TurnTaker, turn: CallerTurn, state: VADState, secs: float) -> None:
        """Send the utterance to Whisper halfway to ``early_secs`` (sooner when Whisper is
        idle), so that its transcript is ready when the pause is confirmed; a caller who
        goes on voids it."""
        if state == VADState.STOPPING:
            turn.stopping_secs += secs
            head_start = self._settings.speculate and turn.transcript is None
            if head_start and (
                self._silence_so_far(turn) >= self._settings.early_secs / 2
                or (
                    turn.quiet_secs >= IDLE_HEAD_START_SECS
                    # Whisper's only work is this turn's prefill: the head start runs beside it.
                    and (self._whisper_idle() or self._prefilling(turn))
                )
            ):
                self._start_transcript(turn)
        elif state == VADState.SPEAKING and turn.stopping_secs:
            turn.stopping_secs = 0.0
            if turn.transcript is not None and not turn.transcript.done():
                turn.transcript.cancel()
            turn.transcript = None

    def _whisper_idle(self: TurnTaker) -> bool:
        return self._transcriber_idle is not None and self._transcriber_idle()

    def _start_transcript(self: TurnTaker, turn: CallerTurn) -> None:
        if turn.transcript is None or turn.transcript_generation != turn.generation:
            audio = samples(self._words_of(turn))
            turn.transcript = self._spawn(self._transcript_of(audio))
            turn.transcript_generation = turn.generation

    def _words_of(self: TurnTaker, turn: CallerTurn) -> bytes:
        """The turn's audio up to ``early_secs / 2`` after its last loud frame.

        Whisper ``tiny.en`` hears the same words differently with 0.1 s or 0.4 s of
        silence after them ("What timed as" / "What timed is"). Cut at one point
        after the words, the transcript sent at the head start, at the pause and at
        the commit is of the same audio, so a speculation is reused and the reply
        does not depend on when the transcript was asked for. Only silence that the
        VAD heard too is cut: a caller too quiet for the level meter keeps it all.
        """
        heard = turn.silence_secs if turn.paused else self._silence_so_far(turn)
        cut_secs = min(turn.quiet_secs, heard) - self._settings.early_secs / 2
        cut = int(cut_secs * SAMPLE_RATE) * 2
        return bytes(turn.audio[: len(turn.audio) - cut] if cut > 0 else turn.audio)

    async def _transcript_of(self: TurnTaker, audio: np.ndarray) -> str:
        padded = np.concatenate([audio, np.zeros(int(TRAILING_SILENCE_SECS * SAMPLE_RATE))])
        return (await self._transcribe(padded.astype(np.float32))).strip()

    async def _awaited_transcript(
        self: TurnTaker, turn: CallerTurn, *, report: bool = True
    ) -> str | None:
        """The turn's transcript, or None if there is none (not asked for, voided by the
        caller going on, or failed: ``report`` tells the pipeline why, while the turn is
        still being settled)."""
        task = turn.transcript
        if task is None:
            return None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                return None
            raise
        except (ValueError, Overloaded, BatcherClosed) as exc:
            if report and (self._turn is turn or turn.committing):
                await self.push_error(f"speech recognition unavailable: {exc}")
            return None
