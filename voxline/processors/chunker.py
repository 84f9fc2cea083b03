"""Cut the LLM's token stream into speakable chunks, so TTS starts before the reply is done.

The first chunk of a reply goes to TTS at its first clause boundary (``,`` ``;``
``:`` or a dash) once it holds ``min_first_words`` words, or at its first sentence
end, or when ``max_wait_ms`` pass without either (with the whole words so far, once
there are ``max_wait_min_words``) — whichever comes first: the caller hears the bot
after a few words instead of a whole sentence. Later chunks
are whole sentences (or lines of a list), at most ``max_chars`` long, which sound
more natural -- unless the audio already sent is about to run out: the chunker
keeps an estimate of when the caller will have heard everything it sent (each
chunk lasts about ``len(chunk) / speech_chars_per_sec`` seconds), and
``runway_lead_ms`` before that moment the words of an unfinished sentence go out
at their last clause boundary, or their last whole word, so the voice does not
stop in mid-reply while the LLM finishes the sentence. A speculative reply is held
after TTS until the caller's turn is committed: its audio is heard from the commit,
so its sentences are not cut for the runway before it.

Sentence ends inside abbreviations (Dr., e.g., U.S.), numbers ($3.50, 1,200), times
(10:30), e-mail addresses and URLs are not boundaries, and markdown, list bullets and
emoji are removed: a voice must not read them.
"""

from __future__ import annotations

import asyncio
import re

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

ABBREVIATIONS = frozenset(
    {
        *("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc"),
        *("inc", "ltd", "co", "corp", "dept", "approx", "apt", "ave", "blvd"),
        *("e.g", "i.e", "u.s", "u.k", "a.m", "p.m"),
    }
)
NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "tel", "ext", "fig", "vol", "pp"})
"""Abbreviations only before a number ("No. 5", "ext. 204"): "No." before a word ends a
sentence ("No. I can't do that.")."""
SENTENCE_END = ".!?"
CLAUSE_END = ",;:"
CLOSERS = "\"')]}»”’*_`~"
MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
MARKDOWN = re.compile(
    r"\*{1,3}|`+|~~|__|^[ \t]*#{1,6}[ \t]+|^[ \t]*>[ \t]?|^[ \t]*(?:[-•+]|\d+[.)])[ \t]+",
    re.MULTILINE,
)
EMOJI = re.compile("[\U0001f000-\U0001faff\U00002600-\U000027bf\U00002b00-\U00002bff\ufe0f\u200d]+")
LIST_MARKER = re.compile(r"(?:^|\n)[ \t]*\d+$")
SLOW_STREAM_FACTOR = 2.0
"""A reply written slower than this many times the voice's speed (``speech_chars_per_sec``)
is slow: its first chunk holds ``slow_first_words`` words."""
RUNWAY_MIN_WORDS = 4
"""The fewest words a chunk cut for the runway holds (more if ``min_first_words`` is
higher): a mid-sentence cut of one or two words sounds broken, where a short first
clause ("Sure,", "Of course,") is a natural pause."""


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def clean_for_speech(text: str) -> str:
    """Remove markdown, bullets and emoji a voice must not read, and fold white space."""
    text = MARKDOWN_LINK.sub(r"\1", text)
    text = EMOJI.sub(" ", text)
    return " ".join(MARKDOWN.sub(" ", text).split())


class SentenceChunker:
    """Incremental text chunker: feed it tokens, get speakable chunks back.

    Args:
        min_first_words: words the first chunk needs before a clause boundary may end it.
        max_chars: a chunk longer than this is cut at its last space.
    """

    def __init__(self, *, min_first_words: int = 4, max_chars: int = 250):
        if min_first_words < 1 or max_chars < 20:
            raise ValueError("min_first_words must be >= 1 and max_chars >= 20")
        self.min_first_words = min_first_words
        self.max_chars = max_chars
        self._buffer = ""
        self._first = True

    def reset(self) -> None:
        """Forget the reply in progress (a new reply or an interruption)."""
        self._buffer = ""
        self._first = True

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the chunks that are now complete."""
        self._buffer += text
        chunks = []
        while (cut := self._next_cut()) is not None:
            chunk = clean_for_speech(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            if chunk:
                chunks.append(chunk)
                self._first = False
        return chunks

    @property
    def has_text(self) -> bool:
        """Whether words of the reply wait that have not gone out in a chunk."""
        return bool(self._buffer.strip())

    @property
    def before_first(self) -> bool:
        """Whether the reply's first chunk has not gone out yet (its text may not have come)."""
        return self._first

    @property
    def waiting_for_first(self) -> bool:
        """Whether the reply has text but its first chunk has not gone out yet."""
        return self._first and bool(self._buffer.strip())

    def take_first_words(self, min_words: int = 1) -> str | None:
        """The first chunk now, up to the last whole word (``max_wait_ms`` passed);
        ``None`` while fewer than ``min_words`` whole words wait."""
        if not self.waiting_for_first:
            return None
        return self.take_words(min_words=min_words, at_clause=False)

    def take_words(self, *, min_words: int, at_clause: bool = True) -> str | None:
        """The words so far as a chunk now, though their sentence has not ended.

        The chunk ends at the last clause boundary after ``min_words`` words
        (``at_clause``), or else at the last whole word; ``None`` while fewer than
        ``min_words`` whole words wait.
        """
        text = self._buffer
        # A word that ends in a clause mark is whole ("account,"), a digit may go on ("1,").
        ended = len(text) > 1 and text[-1] in CLAUSE_END and text[-2].isalpha()
        space = len(text) if ended else max(text.rfind(" "), text.rfind("\n"))
        if space <= 0 or len(text[:space].split()) < min_words:
            return None
        cut = space
        for i in range(space - 1, 0, -1) if at_clause else ():
            after = text[i + 1] if i + 1 < len(text) else " "
            if after.isspace() and (text[i] in CLAUSE_END or _is_dash(text, i)):
                if len(text[:i].split()) >= min_words:
                    cut = i + 1
                break
        chunk = clean_for_speech(text[:cut])
        self._buffer = text[cut:]
        if not chunk:
            return None
        self._first = False
        return chunk

    def flush(self) -> str | None:
        """The rest of the reply, at its end; the chunker is then ready for the next one."""
        rest = clean_for_speech(self._buffer)
        self.reset()
        return rest or None

    def _next_cut(self) -> int | None:
        """Index just past the next chunk's end, or None if no chunk is complete yet."""
        text = self._buffer
        for i in range(min(len(text), self.max_chars)):
            char = text[i]
            if char == "\n" and text[:i].strip():
                return i + 1  # a line of a list or a paragraph is a chunk of its own
            end = i + 1
            while end < len(text) and text[end] in CLOSERS:
                end += 1
            if end >= len(text) or not text[end].isspace():
                # A boundary needs the character after it: "3." may become "3.50".
                continue
            if char in SENTENCE_END and not self._is_abbreviation(text, i):
                if char == "." and LIST_MARKER.search(text[:i]):
                    continue  # "2." that numbers a list item
                return end
            is_clause_end = char in CLAUSE_END or _is_dash(text, i)
            if self._first and is_clause_end and len(text[:i].split()) >= self.min_first_words:
                return end
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None

    @staticmethod
    def _is_abbreviation(text: str, index: int) -> bool:
        if text[index] != ".":
            return False
        word = text[:index].split()[-1:] or [""]
        token = word[0].lower().lstrip("(\"'")
        if token in ABBREVIATIONS:
            return True
        if token in NUMBER_ABBREVIATIONS:
            following = text[index + 1 :].lstrip(CLOSERS).lstrip()
            # Undecided until the next word begins: "No. " may become "No. 5".
            return not following or following[0].isdigit()
        # A single capital initial ("J. Smith") or a dotted acronym ("U.S.").
        return len(token) == 1 and token.isalpha() and word[0][-1].isupper()


def _is_dash(text: str, index: int) -> bool:
    return text[index] in "—–" or (text[index] == "-" and index > 0 and text[index - 1] == " ")


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
            or self._runway_timer is not None
            or not self._chunker.has_text
        ):
            return
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
            slow = self._slow_first_words is not None and self._writing_slowly(now)
            words = self._slow_first_words if slow else None
            self._chunker.min_first_words = max(self._min_first_words, words or 0)

    def _writing_slowly(self, now: float) -> bool:
        """Whether the reply is written slower than ``SLOW_STREAM_FACTOR`` x the voice."""
        if self._reply_began is None or now <= self._reply_began:
            return False
        rate = self._reply_chars / (now - self._reply_began)
        return rate < SLOW_STREAM_FACTOR * self._chars_per_sec

    def _first_words_needed(self) -> int:
        if self._slow_first_words is not None and self._writing_slowly(_loop_time()):
            return max(self._max_wait_min_words, self._slow_first_words)
        return self._max_wait_min_words

    def _take_first_words(self) -> str | None:
        chunk = self._chunker.take_first_words(self._first_words_needed())
        if not self._chunker.waiting_for_first:  # taken, or nothing left to wait for
            self._first_overdue = False
        return chunk

    async def _runway_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        lead = self._lead_secs or 0.0
        # A sentence that ends meanwhile moves the deadline on: look again after it.
        while (ends_at := self._clock.ends_at) is not None and (
            wait := ends_at - lead - loop.time()
        ) > 0:
            await asyncio.sleep(wait)  # a deadline, not synchronisation
        self._runway_timer = None
        chunk = self._chunker.take_words(min_words=self._runway_min_words)
        if chunk:
            await self._push_chunk(chunk)
            self._watch_runway()
        # Too few words yet: the next token looks again (the deadline has passed).

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
