"""How a caller's turn ends: judged complete, then committed or settled without a reply.

A turn is judged complete by the shared end-of-turn model, by Whisper's question mark or
finished sentence (:mod:`~voxline.processors.turn`), each after the pause it asks for: a
short turn, or one begun over the bot, needs :data:`CAREFUL_PAUSE_SECS`, since callers who
said a word or two ("Hi,", "Wait, stop.") usually go on. The commit sends the turn's
transcript to the context, the speculative one when it is the same, and the prepared reply
plays; a turn with no words, or with only a backchannel said over the bot, is settled
without a reply, and a caller who spoke a second or more without a word Whisper could make
out is asked to say it again.

:class:`TurnEnd` is a part of :class:`~voxline.processors.turn.TurnTaker`, kept here to
keep each concern in a module of its own; its methods use the turn-taker's state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from loguru import logger
from pipecat.frames.frames import (
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.utils.time import time_now_iso8601

from voxline import logcontent
from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.processors.frames import (
    EndOfTurnDecisionFrame,
    SpeculationStartedFrame,
    TranscriptionSkippedFrame,
    TurnCommittedFrame,
)
from voxline.processors.turn_state import SAMPLE_RATE, CallerTurn, samples
from voxline.processors.turn_words import ends_mid_sentence

if TYPE_CHECKING:
    from voxline.processors.turn import TurnTaker

CAREFUL_PAUSE_SECS = 0.6
"""The pause that ends a short turn, or one begun over the bot, that the model judged complete."""
SHORT_TURN_SECS = 1.0
"""Speech shorter than this ("Hi,", "So,", "Wait,") is often the start of a longer turn."""
NOT_UNDERSTOOD_SECS = 1.0
"""Speech at least this long that Whisper makes no words of is a caller who was not
understood (a cough or a breath is shorter): the bot asks them to say it again."""


class TurnEnd:
    """The turn-taker's verdicts on a turn and its commit (module doc)."""

    async def _decide(self: TurnTaker, turn: CallerTurn, generation: int) -> None:
        assert self._end_of_turn is not None
        asked = time.monotonic()
        try:
            decision = await self._end_of_turn(samples(bytes(turn.audio)))
        except (ValueError, Overloaded, BatcherClosed) as exc:
            logger.warning(f"{self}: end-of-turn model unavailable ({exc}); waiting for stop_secs")
            return
        complete = decision.complete
        decision_secs = time.monotonic() - asked
        self._counters.decision_secs.append(decision_secs)
        if complete:
            self._counters.decisions_complete += 1
        else:
            self._counters.decisions_incomplete += 1
        unsure = not complete and self._unsure(decision.probability)
        overruled = (complete or unsure) and await self._words_go_on(turn)
        if overruled:
            logger.debug(f"{self}: the words stop mid-sentence; the model's verdict waits")
            self._counters.decisions_overruled += 1
        await self.push_frame(
            EndOfTurnDecisionFrame(
                complete=complete,
                probability=round(decision.probability, 3),
                latency_ms=round(decision_secs * 1000, 1),
                overruled=overruled,
            )
        )
        if overruled:
            return
        if complete:
            self._complete(turn, generation, "model")
        elif unsure:
            # Probably finished, though below the threshold: a shorter wait than stop_secs.
            after = self._settings.unsure_stop_secs
            self._complete(turn, generation, "model", after)

    async def _words_go_on(self: TurnTaker, turn: CallerTurn) -> bool:
        """Whether Whisper's words so far stop mid-sentence, so that the model's verdict
        of a finished turn does not count (``turn_words.ends_mid_sentence``).

        The commit waits for the same transcript, so waiting for it here delays the
        commit by one frame at most; a turn whose transcript is not asked for before the
        commit (no speculation, no rule on the words) keeps the verdict.
        """
        if not self._settings.mid_sentence_waits:
            return False
        # The commit reports a failed transcript; a voided one voids this verdict too.
        text = await self._awaited_transcript(turn, report=False)
        if text is None:
            return False
        return ends_mid_sentence(text)

    def _unsure(self: TurnTaker, probability: float) -> bool:
        threshold = self._settings.model_unsure_threshold
        return threshold is not None and probability >= threshold

    def _complete(
        self, turn: CallerTurn, generation: int, reason: str, after_secs: float = 0.0
    ) -> None:
        """The turn is judged complete: it is committed on the first frame the VAD calls
        quiet once the pause is ``after_secs`` long (a longer one if the turn is short).

        Never here and now: a verdict can come back late (the model's queue is shared by
        every call), while the VAD is analyzing the frame in which the caller starts
        again; committing then answered half a sentence. On the next frame the VAD has
        called, a caller going on is a resumption, which voids the verdict.
        """
        if self._turn is not turn or turn.generation != generation or not turn.paused:
            return
        if self._needs_longer_pause(turn):
            # "Hi, what is my balance?", "Wait, stop. I have a question.": after a word
            # or two, or over the bot, callers go on; the verdict holds once the pause is
            # a little longer (the reply is being prepared meanwhile).
            after_secs = max(after_secs, CAREFUL_PAUSE_SECS)
        if not turn.complete_reason or after_secs < turn.complete_after_secs:
            turn.complete_reason, turn.complete_after_secs = reason, after_secs

    def _needs_longer_pause(self: TurnTaker, turn: CallerTurn) -> bool:
        spoken = time.monotonic() - turn.onset - turn.silence_secs
        if turn.before_reply:
            # Going on from a turn committed a moment ago ("I lost my card yesterday, |
            # what should I do?"): timed as the rest of that turn, not as a barge-in,
            # after which callers go on.
            return spoken + turn.continued_secs < SHORT_TURN_SECS
        return turn.over_bot or spoken < SHORT_TURN_SECS

    async def _commit(self: TurnTaker, turn: CallerTurn, reason: str) -> None:
        """The caller is done: the turn's transcript goes to the context, the reply plays."""
        if turn.committing or self._turn is not turn:
            return
        turn.committing = True
        spoken_secs = time.monotonic() - turn.onset - turn.silence_secs
        self._committed_spoken_secs = spoken_secs + turn.continued_secs
        # From here on the caller's next words start a new turn.
        self._turn = None
        self._release_bot(turn)
        if turn.decision is not None and not turn.decision.done() and reason != "model":
            turn.decision.cancel()
        self._start_transcript(turn)
        text = await self._awaited_transcript(turn)
        if turn.dropped:
            return
        if turn.words_check is not None:
            turn.words_check.cancel()
        if text is None:
            await self._settle_without_reply(turn, "error")
            return
        if not text:
            # Over the bot, speech without words is a murmur it talks on through; but once
            # it stopped the bot, the caller waits in silence for an answer to something.
            quiet_bot = turn.interrupted_bot or not (turn.over_bot or self._bot_busy())
            ask = spoken_secs >= NOT_UNDERSTOOD_SECS and quiet_bot
            # The line goes first: once the utterance is settled the call may look idle
            # (voxline talk ends it then); a speculation is cancelled before it, though.
            if ask and turn.eager_text is None:
                await self._ask_to_repeat(spoken_secs)
            await self._settle_without_reply(turn, "no speech")
            if ask and turn.eager_text is not None:
                await self._ask_to_repeat(spoken_secs)
            return
        if self._bot_busy() and self._overheard(turn, text):
            heard = logcontent.text(text)
            logger.debug(f"{self}: overheard {heard} while the bot spoke; not a turn")
            self._counters.overheard += 1
            if self._settings.overheard == "join":
                self._carried_text = f"{self._carried_text} {text}".strip()
            await self._settle_without_reply(turn, "overheard")
            return
        text = self._with_carried(text)
        self._carried_text = ""
        reused = turn.eager_text == text
        if turn.eager_text is not None and not reused:
            await self._cancel_speculation("changed")
        if turn.eager_text is None:
            # The transcript stands for the utterance sent at the pause.
            await self.push_frame(SpeculationStartedFrame(text=text))
        await self._open_aggregator_turn(turn)
        self._reply_pending_since = time.monotonic()
        self._counters.speculations_reused += int(reused)
        if reason == "model":
            self._counters.commits_by_model += 1
        elif reason == "question":
            self._counters.commits_by_question += 1
        elif reason == "sentence":
            self._counters.commits_by_sentence += 1
        else:
            self._counters.commits_by_silence += 1
        await self.push_frame(TurnCommittedFrame(reason=reason, reused=reused))
        await self.push_frame(TranscriptionFrame(text, "", time_now_iso8601(), finalized=True))
        await self.push_frame(ProposedUserStoppedSpeakingFrame())

    async def _ask_to_repeat(self: TurnTaker, spoken_secs: float) -> None:
        """Whisper heard no words in a caller's speech: the bot says so instead of
        leaving them in silence (a voice Whisper hears badly, a word it cannot make out)."""
        if self._not_understood is None or self._turn is not None:
            return  # no line, or the caller already goes on
        logger.info(f"{self}: {spoken_secs:.1f} s of speech without words; asking to repeat")
        self._counters.not_understood += 1
        await self.push_frame(self._not_understood())

    async def _settle_without_reply(self: TurnTaker, turn: CallerTurn, reason: str) -> None:
        secs = len(turn.audio) / 2 / SAMPLE_RATE
        logger.debug(f"{self}: {secs:.2f} s of caller audio ended without a reply ({reason})")
        if turn.eager_text is not None:
            await self._cancel_speculation(reason)
        else:
            await self.push_frame(TranscriptionSkippedFrame(reason=reason, audio_secs=secs))
        if turn.opened:
            # The aggregator's turn was opened for a speculation: close it empty.
            await self.push_frame(ProposedUserStoppedSpeakingFrame())

    async def _open_aggregator_turn(self: TurnTaker, turn: CallerTurn) -> None:
        if not turn.opened:
            turn.opened = True
            await self.push_frame(ProposedUserStartedSpeakingFrame())

    def _with_carried(self: TurnTaker, text: str) -> str:
        return f"{self._carried_text} {text}".strip() if self._carried_text else text
