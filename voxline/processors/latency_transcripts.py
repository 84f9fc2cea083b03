"""How the caller's transcripts and the turn-taker's verdicts open and close a turn's trace.

A transcript opens a turn, or joins the turn still being spoken (a speculative one
until the commit, or a second utterance before the bot answered); the commit takes the
end-of-turn model's decisions and the barge-in noted before it; a withdrawn speculation
either leaves the turn to the next one or, when nothing was a turn after all (a
backchannel, noise), removes it.

:class:`TranscriptTurns` is a part of :class:`~voxline.processors.latency.LatencyTracer`,
kept here to keep each concern in a module of its own; its methods use the tracer's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voxline.processors.frames import TurnCommittedFrame
from voxline.processors.turn_trace import SPECULATION_RETRIED, TurnTrace

if TYPE_CHECKING:
    from voxline.processors.latency import LatencyTracer


class TranscriptTurns:
    """The tracer's handling of transcripts, speculations and commits (module doc)."""

    def _on_speculation_cancelled(self: LatencyTracer, reason: str) -> None:
        # The withdrawn completion's end frame is not the turn's answer, and its text and
        # audio still on their way to the gate are no stage of the next one.
        self._llm_interrupted = self._llm_responding
        self._withdrawn = True
        turn = self._turn
        if turn is None or turn.complete or turn.committed is not None:
            return
        if reason in SPECULATION_RETRIED:
            turn.reset_speculation(reason)
            return
        # Not a turn after all (a backchannel, noise): nothing was answered.
        self.trace.turns.remove(turn)
        self._turn = None

    def _on_commit(self: LatencyTracer, frame: TurnCommittedFrame, now: int) -> None:
        turn = self._turn
        if turn is None or turn.complete or turn.committed is not None:
            return
        turn.committed = now
        turn.commit_reason, turn.reused = frame.reason, frame.reused
        turn.decisions, self._decisions = self._decisions, []
        turn.barge_in_ms, self._barge_in_ms = self._barge_in_ms, None

    def _on_transcription(
        self: LatencyTracer, text: str, now: int, *, whole_utterance: bool = False
    ) -> None:
        """A transcript of the caller; ``whole_utterance``: it covers the turn so far."""
        utterance = self._pending.take()
        turn = self._turn
        # The turn still being spoken takes every new transcript of the caller: a
        # speculative one (until committed), or, without speculation (keypad digits),
        # one that comes before the bot has started answering.
        open_turn = turn is not None and not turn.complete
        speculating = open_turn and turn.speculative_starts > 0 and turn.committed is None
        unanswered = open_turn and turn.speculative_starts == 0 and turn.llm_first_token is None
        if turn is not None and (speculating or unanswered):
            # A second utterance before the bot answered belongs to the same turn.
            if whole_utterance:
                turn.caller_text = text.strip()
                turn.speculative_starts += 1
            else:
                turn.caller_text = f"{turn.caller_text} {text}".strip()
            if utterance is not None:
                turn.speech_end, turn.stt_request = utterance.speech_end, utterance.stt_request
            turn.transcribed = now
            self._take_stt(turn)
            return
        if turn is not None and not turn.complete:
            # The caller spoke again before this turn's answer was over.
            turn.interrupted = True
            self._finish(turn)
        self._audio.forget_queued_reply()
        turn = TurnTrace(index=len(self.trace.turns) + 1, caller_text=text.strip(), transcribed=now)
        turn.speculative_starts = 1 if whole_utterance else 0
        if utterance is not None:
            turn.speech_end, turn.stt_request = utterance.speech_end, utterance.stt_request
        self._take_stt(turn)
        self.trace.turns.append(turn)
        self._turn = turn

    def _take_stt(self: LatencyTracer, turn: TurnTrace) -> None:
        if self._last_stt is not None:
            (turn.stt_batch_size, turn.stt_queue_wait_ms), self._last_stt = self._last_stt, None
