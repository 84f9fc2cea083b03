"""Cut the LLM's token stream into speakable chunks, so TTS starts before the reply is done.

The first chunk of a reply goes to TTS at its first clause boundary (``,`` ``;``
``:`` or a dash) once it holds ``min_first_words`` words, or at its first sentence
end, or when ``max_wait_ms`` pass without either — whichever comes first: the
caller hears the bot after a few words instead of a whole sentence. Later chunks
are whole sentences (or lines of a list), at most ``max_chars`` long, which sound
more natural. Sentence ends inside abbreviations (Dr., e.g., U.S.), numbers
($3.50, 1,200), times (10:30), e-mail addresses and URLs are not boundaries, and
markdown, list bullets and emoji are removed: a voice must not read them.
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
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType

ABBREVIATIONS = frozenset(
    {
        *("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc"),
        *("inc", "ltd", "co", "corp", "dept", "approx", "apt", "ave", "blvd"),
        *("no", "tel", "ext", "fig", "e.g", "i.e", "u.s", "u.k", "a.m", "p.m"),
    }
)
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
    def waiting_for_first(self) -> bool:
        """Whether the reply has text but its first chunk has not gone out yet."""
        return self._first and bool(self._buffer.strip())

    def take_first_words(self) -> str | None:
        """The first chunk now, up to the last whole word (``max_wait_ms`` passed)."""
        if not self.waiting_for_first:
            return None
        space = max(self._buffer.rfind(" "), self._buffer.rfind("\n"))
        if space <= 0:
            return None
        chunk = clean_for_speech(self._buffer[:space])
        self._buffer = self._buffer[space:]
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
        # A single capital initial ("J. Smith") or a dotted acronym ("U.S.").
        return len(token) == 1 and token.isalpha() and word[0][-1].isupper()


def _is_dash(text: str, index: int) -> bool:
    return text[index] in "—–" or (text[index] == "-" and index > 0 and text[index - 1] == " ")


class ChunkerProcessor(FrameProcessor):
    """Turns streamed ``LLMTextFrame``s into ``AggregatedTextFrame`` chunks for TTS.

    Sits between the LLM and the TTS service; TTS speaks each chunk as it comes.
    A new reply or an interruption resets it; the end of a reply flushes it. If
    the first chunk has no boundary ``max_wait_ms`` after the reply's first token,
    the words so far go out as the first chunk.

    Args:
        min_first_words: words the first chunk needs before a clause boundary ends it.
        max_wait_ms: the longest the first chunk waits for a boundary.
        max_chars: the longest chunk.
    """

    def __init__(
        self, *, min_first_words: int = 4, max_wait_ms: float = 250, max_chars: int = 250, **kwargs
    ):
        super().__init__(**kwargs)
        self._chunker = SentenceChunker(min_first_words=min_first_words, max_chars=max_chars)
        self._max_wait_secs = max_wait_ms / 1000
        self._deadline: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Chunk LLM text; pass every other frame through."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            chunks = self._chunker.push(frame.text)
            if chunks:
                self._cancel_deadline()
            elif self._chunker.waiting_for_first and self._deadline is None:
                self._deadline = self.create_task(self._first_chunk_deadline())
            for chunk in chunks:
                await self.push_frame(AggregatedTextFrame(chunk, TextType.SENTENCE))
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            self._cancel_deadline()
            rest = self._chunker.flush()
            if rest:
                await self.push_frame(AggregatedTextFrame(rest, TextType.SENTENCE))
        elif isinstance(
            frame, (LLMFullResponseStartFrame, InterruptionFrame, EagerEndOfTurnCancelFrame)
        ):
            self._cancel_deadline()
            self._chunker.reset()
        await self.push_frame(frame, direction)

    async def _first_chunk_deadline(self) -> None:
        await asyncio.sleep(self._max_wait_secs)  # a deadline, not synchronisation
        self._deadline = None
        chunk = self._chunker.take_first_words()
        if chunk:
            await self.push_frame(AggregatedTextFrame(chunk, TextType.SENTENCE))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def cleanup(self) -> None:
        """Stop the first-chunk timer with the pipeline."""
        self._cancel_deadline()
        await super().cleanup()
