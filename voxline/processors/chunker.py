"""Cut the LLM's token stream into speakable chunks, so TTS starts before the reply is done.

The first chunk of a reply goes to TTS at its first clause boundary (``,`` ``;``
``:`` or a dash) once it holds ``min_first_words`` words, or at its first sentence
end, whichever comes first: the caller hears the bot after a few words instead of
a whole sentence. Later chunks are whole sentences, which sound more natural.
Sentence ends inside abbreviations (Dr., e.g.), numbers ($3.50, 1,200) and
times (10:30) are not boundaries.
"""

from __future__ import annotations

import re

from pipecat.frames.frames import (
    AggregatedTextFrame,
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
CLOSERS = "\"')]}»”’"
MARKDOWN = re.compile(r"[*_#`~]+|^\s*(?:[-•]|\d+[.)])\s+", re.MULTILINE)


def clean_for_speech(text: str) -> str:
    """Remove markdown a voice must not read, and fold white space."""
    return " ".join(MARKDOWN.sub(" ", text).split())


class SentenceChunker:
    """Incremental text chunker: feed it tokens, get speakable chunks back.

    Args:
        min_first_words: words the first chunk needs before a clause boundary may end it.
        max_chars: a chunk longer than this is cut at its last space.
    """

    def __init__(self, *, min_first_words: int = 4, max_chars: int = 250):
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

    def flush(self) -> str | None:
        """The rest of the reply, at its end; the chunker is then ready for the next one."""
        rest = clean_for_speech(self._buffer)
        self.reset()
        return rest or None

    def _next_cut(self) -> int | None:
        """Index just past the next chunk's end, or None if no chunk is complete yet."""
        text = self._buffer
        for i, char in enumerate(text):
            end = i + 1
            while end < len(text) and text[end] in CLOSERS:
                end += 1
            if end >= len(text) or not text[end].isspace():
                # A boundary needs the character after it: "3." may become "3.50".
                continue
            if char in SENTENCE_END and not self._is_abbreviation(text, i):
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
    A new reply or an interruption resets it; the end of a reply flushes it.

    Args:
        min_first_words: words the first chunk needs before a clause boundary ends it.
    """

    def __init__(self, *, min_first_words: int = 4, **kwargs):
        super().__init__(**kwargs)
        self._chunker = SentenceChunker(min_first_words=min_first_words)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Chunk LLM text; pass every other frame through."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            for chunk in self._chunker.push(frame.text):
                await self.push_frame(AggregatedTextFrame(chunk, TextType.SENTENCE))
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            rest = self._chunker.flush()
            if rest:
                await self.push_frame(AggregatedTextFrame(rest, TextType.SENTENCE))
        elif isinstance(frame, (LLMFullResponseStartFrame, InterruptionFrame)):
            self._chunker.reset()
        await self.push_frame(frame, direction)
