"""Cut the LLM's token stream into speakable chunks, so TTS starts before the reply is done.

The first chunk of a reply goes to TTS at its first clause boundary (``,`` ``;``
``:`` or a dash) once it holds ``min_first_words`` words, or at its first sentence
end, or when ``max_wait_ms`` pass without either (with the whole words so far, once
there are ``max_wait_min_words``) — whichever comes first: the caller hears the bot
after a few words instead of a whole sentence. A reply written slower than three times
the voice's speed (an LLM shared by many calls at once) waits for ``slow_first_words`` words
instead: a first clause of one or two words would run out before the next words are
written and voiced. Later chunks
are whole sentences (or lines of a list), at most ``max_chars`` long, which sound
more natural -- unless the audio already sent is about to run out: the chunker
keeps an estimate of when the caller will have heard everything it sent (each
chunk lasts about ``len(chunk) / speech_chars_per_sec`` seconds), and
``runway_lead_ms`` before that moment the words of an unfinished sentence go out
at their last clause boundary, or their last whole word (four words at least, any
whole word once half the lead is left), so the voice does not stop in mid-reply while
the LLM finishes the sentence. A speculative reply is held
after TTS until the caller's turn is committed: its audio is heard from the commit,
so its sentences are not cut for the runway before it.

Where a boundary is, and what a voice must not read, is
:class:`~voxline.processors.sentence_chunker.SentenceChunker`'s.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    AggregatedTextFrame,
    EagerEndOfTurnCancelFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType

from voxline.processors.frames import ReplySpeculationFrame
from voxline.processors.reply_clock import ReplyClock
from voxline.processors.sentence_chunker import SentenceChunker

SLOW_STREAM_FACTOR = 3.0
"""A reply written slower than this many times the voice's speed (``speech_chars_per_sec``)
is slow: its first chunk holds ``slow_first_words`` words."""
RUNWAY_MIN_WORDS = 4
"""The fewest words a chunk cut for the runway holds (more if ``min_first_words`` is
higher) until the caller is half the runway lead from running out of audio: a
mid-sentence cut of one or two words sounds broken, where a short first clause ("Sure,",
"Of course,") is a natural pause. From then on any whole word goes."""


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class ChunkerProcessor(FrameProcessor):
    """Turns streamed ``LLMTextFrame``s into ``AggregatedTextFrame`` chunks for TTS.

    Sits between the LLM and the TTS service; TTS speaks each chunk as it comes.
    A new reply or an interruption resets it; the end of a reply flushes it. If
    the first chunk has no boundary ``max_wait_ms`` after the reply's first token,
    the whole words so far go out as the first chunk, once there are
    ``max_wait_min_words`` of them. After it, a sentence still being
    written when the audio sent so far is about to end goes out in part (its last
    clause boundary, or its last whole word once enough words wait):
    a pause while the LLM finishes a long sentence would be heard as the voice
    stopping.

    Args:
        min_first_words: words the first chunk needs before a clause boundary ends it;
            a chunk cut for the runway holds at least this many, and at least
            ``RUNWAY_MIN_WORDS``.
        max_wait_ms: the longest the first chunk waits for a boundary.
        max_wait_min_words: the fewest words a first chunk cut for ``max_wait_ms`` holds
            (a slower LLM makes it wait for them): one or two words cut from their
            phrase sound broken.
        max_chars: the longest chunk.
        speech_chars_per_sec: how fast the voice speaks, for the estimate of when the
            audio sent runs out; a higher figure cuts earlier.
        runway_lead_ms: how long before the audio sent runs out an unfinished sentence
            is cut (time for TTS to voice it); ``None`` waits for whole sentences.
        slow_first_words: the words a first chunk holds, at a clause boundary or when
            ``max_wait_ms`` has passed, while the reply is written slower than
            ``SLOW_STREAM_FACTOR`` times the voice's speed (an LLM shared by many calls at
            once): a first clause of one or two words would run out before the next words
            are written and voiced. ``None``: no such rule.
    """

    def __init__(
        self,
        *,
        min_first_words: int = 1,
        max_wait_ms: float = 150,
        max_wait_min_words: int = 3,
        max_chars: int = 250,
        speech_chars_per_sec: float = 20.0,
        runway_lead_ms: float | None = 500,
        slow_first_words: int | None = 6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if speech_chars_per_sec <= 0:
            raise ValueError("speech_chars_per_sec must be > 0")
        if max_wait_min_words < 1:
            raise ValueError("max_wait_min_words must be >= 1")
        self._chunker = SentenceChunker(min_first_words=min_first_words, max_chars=max_chars)
        self._runway_min_words = max(min_first_words, RUNWAY_MIN_WORDS)
        self._max_wait_secs = max_wait_ms / 1000
        self._max_wait_min_words = max_wait_min_words
        self._first_overdue = False  # max_wait_ms passed before enough words came
        self._chars_per_sec = speech_chars_per_sec
        self._lead_secs = None if runway_lead_ms is None else runway_lead_ms / 1000
        self._min_first_words = min_first_words
        self._slow_first_words = slow_first_words
        self._reply_began: float | None = None  # when the reply's first text came
        self._reply_chars = 0  # characters of the reply after its first text
        self._deadline: asyncio.Task[None] | None = None
        self._runway_timer: asyncio.Task[None] | None = None
        self._clock = ReplyClock(_loop_time)  # when the audio sent will have been heard

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Chunk LLM text; pass every other frame through."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            self._note_text(frame.text)
            chunks = self._chunker.push(frame.text)
            if chunks:
                self._cancel_deadline()
            elif self._first_overdue:
                chunks = [chunk] if (chunk := self._take_first_words()) else []
            elif self._chunker.waiting_for_first and self._deadline is None:
                self._deadline = self.create_task(self._first_chunk_deadline())
            for chunk in chunks:
                await self._push_chunk(chunk)
            self._watch_runway()
            return
        if isinstance(frame, ReplySpeculationFrame):
            self._clock.start(held=frame.speculative)
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._clock.held:
            self._release_held()
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._cancel_timers()
            rest = self._chunker.flush()
            if rest:
                await self._push_chunk(rest)
            self._forget_runway()
            self._reply_began = None
        elif isinstance(
            frame, (LLMFullResponseStartFrame, InterruptionFrame, EagerEndOfTurnCancelFrame)
        ):
            self._cancel_timers()
            self._chunker.reset()
            self._reply_began = None
            if isinstance(frame, LLMFullResponseStartFrame):
                self._forget_runway()
            else:
                self._clock.reset()
        await self.push_frame(frame, direction)

    async def _push_chunk(self, chunk: str) -> None:
        self._clock.add(len(chunk) / self._chars_per_sec)
        await self.push_frame(AggregatedTextFrame(chunk, TextType.SENTENCE))

    def _release_held(self) -> None:
        """The turn was committed: the held reply's audio starts playing now."""
        self._clock.release()
        self._watch_runway()

    def _forget_runway(self) -> None:
        """A reply ends or begins: the audio sent before no longer bounds a cut."""
        # A held reply has had nothing heard yet, and its audio still waits at the
        # gate for the commit: the hold and what it holds stay.
        if not self._clock.held:
            self._clock.reset()

    def _watch_runway(self) -> None:
        """Time the cut of the sentence being written, if words of it wait."""
        if (
            self._lead_secs is None
            or self._clock.held  # heard from the commit: no runway to watch yet
            or self._clock.ends_at is None
            or self._chunker.waiting_for_first
            or not self._chunker.has_text
        ):
            return
        if self._runway_timer is not None:
            if not self._runway_due():
                return  # the timer cuts at the deadline
            # Past the deadline the timer waits for the caller to be nearly out of audio:
            # these words may make a cut of RUNWAY_MIN_WORDS now.
            self._runway_timer.cancel()
        self._runway_timer = self.create_task(self._runway_deadline())

    async def _first_chunk_deadline(self) -> None:
        await asyncio.sleep(self._max_wait_secs)  # a deadline, not synchronisation
        self._deadline = None
        self._first_overdue = True
        chunk = self._take_first_words()
        if chunk:
            await self._push_chunk(chunk)
            self._watch_runway()
        # Too few words yet: each token looks again until there are enough.

    def _note_text(self, text: str) -> None:
        """Time the reply's writing, and while its first chunk waits, size it to the speed."""
        now = _loop_time()
        if self._reply_began is None:
            self._reply_began, self._reply_chars = now, 0
        else:
            self._reply_chars += len(text)
        if self._chunker.before_first:
            self._chunker.min_first_words = max(self._min_first_words, self._slow_words(now))

    def _slow_words(self, now: float) -> int:
        """``slow_first_words`` while the reply is written slower than
        ``SLOW_STREAM_FACTOR`` x the voice, else 0 (no rule of its own)."""
        if self._slow_first_words is None or self._reply_began is None:
            return 0
        if now <= self._reply_began:
            return 0
        rate = self._reply_chars / (now - self._reply_began)
        slow = rate < SLOW_STREAM_FACTOR * self._chars_per_sec
        return self._slow_first_words if slow else 0

    def _first_words_needed(self) -> int:
        return max(self._max_wait_min_words, self._slow_words(_loop_time()))

    def _take_first_words(self) -> str | None:
        chunk = self._chunker.take_first_words(self._first_words_needed())
        if not self._chunker.waiting_for_first:  # taken, or nothing left to wait for
            self._first_overdue = False
        return chunk

    def _runway_due(self) -> bool:
        """The cut's deadline has passed: the words waiting may be cut now."""
        ends_at, lead = self._clock.ends_at, self._lead_secs or 0.0
        return ends_at is not None and ends_at - lead <= _loop_time()

    async def _runway_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        lead = self._lead_secs or 0.0
        chunk = None
        # A sentence that ends meanwhile moves the deadlines on: each wait looks again.
        while chunk is None and (ends_at := self._clock.ends_at) is not None:
            now = loop.time()
            if now < ends_at - lead:
                await asyncio.sleep(ends_at - lead - now)  # a deadline, not synchronisation
            elif now < ends_at - lead / 2:
                chunk = self._chunker.take_words(min_words=self._runway_min_words)
                if chunk is None:
                    # Too few words: each token looks again, and half the lead before the
                    # caller runs out any whole word goes. A broken phrase is heard as
                    # less of a stop than silence while the LLM writes a long word
                    # ("07:00-18:00," is ten tokens, 1.5 s with eight calls on the server).
                    await asyncio.sleep(ends_at - lead / 2 - now)
            else:
                chunk = self._chunker.take_words(min_words=1)
                break  # no whole word yet: the next token looks again
        self._runway_timer = None  # from here a new token may start the next one
        if chunk:
            await self._push_chunk(chunk)
            self._watch_runway()

    def _cancel_deadline(self) -> None:
        self._first_overdue = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _cancel_timers(self) -> None:
        self._cancel_deadline()
        if self._runway_timer is not None:
            self._runway_timer.cancel()
            self._runway_timer = None

    async def cleanup(self) -> None:
        """Stop the chunk timers with the pipeline."""
        self._cancel_timers()
        await super().cleanup()
