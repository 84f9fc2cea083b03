"""The caller's words so far, sent to the LLM server while the caller still speaks.

With ``turn.speculate``, each :data:`PREFILL_EVERY_SECS` of a turn's audio, while the
shared Whisper engine and the call's LLM server have nothing else to do, the turn's audio
so far is transcribed and pushed as a
:class:`~voxline.processors.frames.CallerWordsSoFarFrame`. The call's LLM service has
the server compute the conversation with those words
(:meth:`~voxline.processors.llm.VoxlineLLMService.prefill`), so the request made at the
pause finds all but the last words in the server's prefix cache. On the embedded
llama.cpp server a caller's question of ~30 tokens took ~150 ms to compute before the
first token of the reply (5 ms a token on the one thread the CPU budget gives it on two
cores), and the speculative reply waits for that after the pause.

Nothing here makes a caller wait: a prefill starts only when the engines have no work
(another call's words, a reply being written or voiced), never while the bot speaks, and its
transcript is dropped once the caller has paused (the speculation then asks with the
whole utterance). :class:`TurnPrefill` is a part of
:class:`~voxline.processors.turn.TurnTaker`, kept here to keep each concern in a module
of its own; its methods use the turn-taker's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.processors.frames import CallerWordsSoFarFrame
from voxline.processors.turn_state import SAMPLE_RATE, CallerTurn, samples

if TYPE_CHECKING:
    from voxline.processors.turn import TurnTaker

PREFILL_EVERY_SECS = 0.6
"""Audio of a turn between two prefills: a question of two or three seconds gets two or
three, each a Whisper run of ~0.1 s on an idle core."""


class TurnPrefill:
    """The turn-taker's prefills of the caller's words (module doc)."""

    def _maybe_prefill(self: TurnTaker, turn: CallerTurn) -> None:
        """Transcribe the turn so far for the LLM server, if it is time and both engines
        are idle."""
        if (
            not self._settings.speculate
            or turn.paused
            or turn.over_bot
            or self._prefilling(turn)
            or len(turn.audio) - turn.prefilled_bytes < PREFILL_EVERY_SECS * SAMPLE_RATE * 2
            or not self._engines_idle()
        ):
            return
        turn.prefilled_bytes = len(turn.audio)
        turn.prefill = self._spawn(self._prefill(turn, bytes(turn.audio)))

    def _prefilling(self: TurnTaker, turn: CallerTurn) -> bool:
        return turn.prefill is not None and not turn.prefill.done()

    def _engines_idle(self: TurnTaker) -> bool:
        """The shared Whisper engine and the call's LLM server have nothing else to do
        (without a way to ask the LLM server, never)."""
        return self._llm_idle is not None and self._whisper_idle() and self._llm_idle()

    async def _prefill(self: TurnTaker, turn: CallerTurn, audio: bytes) -> None:
        # Callers of a burst reach a prefill's interval in the same moment, and each call
        # found the engines idle before any of their prefills ran. The first to run queues
        # its audio before it yields (the Whisper engine queues synchronously); the others
        # find Whisper busy here and wait for their next interval.
        if not self._engines_idle():
            return
        try:
            text = await self._transcript_of(samples(audio))
        except (ValueError, Overloaded, BatcherClosed) as exc:
            logger.debug(f"{self}: no words so far to prefill: {exc}")
            return
        if text and self._turn is turn and not turn.paused and not turn.committing:
            self._counters.prefills += 1
            await self.push_frame(CallerWordsSoFarFrame(text=self._with_carried(text)))
