"""Barge-in: when caller speech over the bot interrupts it, and holding the bot meanwhile.

The caller's speech over the bot interrupts it once a stretch of it lasts
``interrupt_min_secs``, or sooner when it carries words: after 0.2 s (then every
0.15 s, and at every pause) the audio so far is transcribed, and
``interrupt_min_words`` words that are not backchannels ("uh-huh", "okay")
interrupt. A cough or an "uh-huh" does not stop the bot; its words join the
caller's next turn or are dropped (``turn.overheard``).

Those checks take ~0.3 s of speech; the caller would hear the bot talk over them
all that time. So as soon as the VAD hears speech over the bot
(``pause_bot_on_speech``), the output transport holds the bot's audio, as a person
falls silent when the other starts to speak; a barge-in then drops the rest, and a
backchannel or a cough releases the hold: the bot goes on from where it stopped.

:class:`BargeIn` is a part of :class:`~voxline.processors.turn.TurnTaker`, kept
here to keep each concern in a module of its own; its methods use the turn-taker's
state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from loguru import logger

from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.processors.frames import BargeInFrame
from voxline.processors.turn_state import CallerTurn, samples
from voxline.processors.turn_words import meaningful_words

if TYPE_CHECKING:
    from voxline.processors.turn import TurnTaker

WORDS_CHECK_AFTER_SECS = 0.2
"""Speech over the bot this long is transcribed to see whether it carries words.

tiny.en hears Piper's "Wait," in its first 0.2 s and espeak-ng's in most voices by
0.25 s; a 0.15 s cough gives no text at any length."""
WORDS_CHECK_EVERY_SECS = 0.15
"""While the caller speaks over the bot, how often their words so far are checked again
(a check still running is not doubled: on 2 cores one takes ~80-120 ms)."""
REPLY_PENDING_SECS = 5.0
"""How long after a commit the bot counts as answering though no audio has come out yet."""


class BargeIn:
    """The turn-taker's barge-in decisions and its hold on the bot's audio (module doc)."""

    def _overheard(self: TurnTaker, turn: CallerTurn, text: str) -> bool:
        """Words said over the bot that are no turn of their own: a backchannel, a cough."""
        if not turn.over_bot or turn.interrupted_bot:
            return False
        return len(meaningful_words(text)) < self._settings.interrupt_min_words

    def _bot_busy(self: TurnTaker) -> bool:
        """The bot is speaking, or a committed reply is on its way to the caller."""
        if self._bot_speaking:
            return True
        pending = self._reply_pending_since
        return pending is not None and time.monotonic() - pending < REPLY_PENDING_SECS

    async def _check_barge_in(self: TurnTaker, turn: CallerTurn) -> None:
        """While the caller speaks over the bot: a long stretch of speech interrupts it,
        and their words so far are checked now and then."""
        if not turn.over_bot or turn.interrupted_bot or turn.paused:
            return
        if not self._settings.allow_interruptions or not self._bot_busy():
            return
        now = time.monotonic()
        if now - turn.stretch_onset >= self._settings.interrupt_min_secs:
            await self._interrupt(turn, "duration")
            return
        spoken = now - turn.onset
        if spoken < WORDS_CHECK_AFTER_SECS:
            return
        if turn.words_check is not None and not turn.words_check.done():
            return
        if turn.words_checked_at and spoken - turn.words_checked_at < WORDS_CHECK_EVERY_SECS:
            return
        turn.words_checked_at = spoken
        turn.words_check = self._spawn(self._check_words(turn))

    async def _check_words(self: TurnTaker, turn: CallerTurn) -> None:
        """Interrupt the bot if the caller's words so far are more than a backchannel."""
        try:
            text = await self._transcript_of(samples(bytes(turn.audio)))
        except (ValueError, Overloaded, BatcherClosed) as exc:
            logger.warning(f"{self}: could not check words said over the bot: {exc}")
            return
        if self._turn is not turn or turn.interrupted_bot or not self._bot_busy():
            return
        if len(meaningful_words(text)) >= self._settings.interrupt_min_words:
            await self._interrupt(turn, "words")

    def _hold_bot(self: TurnTaker, turn: CallerTurn) -> None:
        """Speech over the bot: hold its audio until the speech is judged (module doc)."""
        settings = self._settings
        holds = settings.pause_bot_on_speech and settings.allow_interruptions
        if self._hold is None or not holds:
            return
        if turn.over_bot and not turn.interrupted_bot and self._bot_busy():
            turn.holding_bot = True
            self._hold.hold()

    def _release_bot(self: TurnTaker, turn: CallerTurn) -> None:
        """``turn``'s speech was no interruption (or its turn is over): the bot goes on."""
        if not turn.holding_bot:
            return
        turn.holding_bot = False
        newer = self._turn
        if self._hold is not None and not (newer is not None and newer.holding_bot):
            self._hold.release()

    async def _interrupt(self: TurnTaker, turn: CallerTurn, reason: str) -> None:
        # The interruption releases the output's hold once its queued audio is dropped.
        turn.holding_bot = False
        turn.interrupted_bot = True
        self._reply_pending_since = None
        self._counters.barge_ins += 1
        after_ms = round((time.monotonic() - turn.onset) * 1000, 1)
        logger.debug(f"{self}: barge-in after {after_ms} ms ({reason})")
        await self.push_frame(BargeInFrame(reason=reason, after_ms=after_ms))
        await self.broadcast_interruption()
