"""Where a reply's text is cut for a voice, and what a voice must not read.

:class:`SentenceChunker` is fed a reply's streamed text and returns speakable chunks: the
first at its first clause boundary once it holds ``min_first_words`` words, or its first
sentence end; later ones whole sentences (or lines of a list), at most ``max_chars`` long.
Sentence ends inside abbreviations (Dr., e.g., U.S.), numbers ($3.50, 1,200), times (10:30),
e-mail addresses and URLs are not boundaries, and markdown, list bullets and emoji are
removed. A web address is said as a person says it: "northwind.com/cards" (the voice says
"dot" and "slash"), without "https://", "www.", a trailing slash, or a query the caller
cannot type. Spelled out, the caller would hear "h t t p s colon slash slash w w w"
first, and the voice would take that much longer to make it.

A mark that ends a plain word ("sorry,", "help?", "confusion.") ends a chunk as soon as it
arrives: waiting for the next token to show a space after it costs a token's time at
every boundary (~20 ms for one call on llama.cpp, ~150 ms a token for eight calls on
vLLM at their peak), time the voice then lacks. A mark after a number, an abbreviation,
a single letter ("e." of "e.g.") or a word with ``@ / . :`` in it still waits for the
next character. The price: a word that an LLM streams as a word, then ``.``, then more
of an address in separate tokens ("help" "." "desk@...") is cut after its first part.

When a chunk goes out on time rather than at a boundary is the business of
:class:`~voxline.processors.chunker.ChunkerProcessor`.
"""

from __future__ import annotations

import re

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
MARKS_AT_WORD_END = ".!?,;"
"""Marks that end a chunk as they arrive after a plain word (a ``:`` may begin ``://``)."""
PLAIN_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
"""Letters, with apostrophes or hyphens inside ("don't", "well-known")."""
CLOSERS = "\"')]}»”’*_`~"
MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
MARKDOWN = re.compile(
    r"\*{1,3}|`+|~~|__|^[ \t]*#{1,6}[ \t]+|^[ \t]*>[ \t]?|^[ \t]*(?:[-•+]|\d+[.)])[ \t]+",
    re.MULTILINE,
)
EMOJI = re.compile("[\U0001f000-\U0001faff\U00002600-\U000027bf\U00002b00-\U00002bff\ufe0f\u200d]+")
LIST_MARKER = re.compile(r"(?:^|\n)[ \t]*\d+$")
WEB_ADDRESS = re.compile(
    r"\b(?:https?://(?:www\.)?|www\.)([^\s?#]*?)(?:[?#]\S*?)?(?=[.,;:!?)\]]*(?:\s|$))", re.I
)
"""A web address from its scheme or ``www.``; group 1 is what is said (host and path)."""


def clean_for_speech(text: str) -> str:
    """Remove markdown, bullets and emoji a voice must not read, say web addresses as a
    person does, and fold white space."""
    text = MARKDOWN_LINK.sub(r"\1", text)
    text = WEB_ADDRESS.sub(_said_address, text)
    text = EMOJI.sub(" ", text)
    return " ".join(MARKDOWN.sub(" ", text).split())


def _said_address(match: re.Match[str]) -> str:
    return match.group(1).rstrip("/")


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
            if speakable(chunk):
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
        if not speakable(chunk):
            return None
        self._first = False
        return chunk

    def flush(self) -> str | None:
        """The rest of the reply, at its end; the chunker is then ready for the next one."""
        rest = clean_for_speech(self._buffer)
        self.reset()
        return rest if speakable(rest) else None

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
            if end >= len(text):
                if not self._ends_plain_word(text, i):
                    continue  # a boundary needs the character after it: "3." may be "3.50"
            elif not text[end].isspace():
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
    def _ends_plain_word(text: str, index: int) -> bool:
        """Whether the mark at ``index``, the last one yet, ends a word of letters
        (module doc); a ``.`` needs two of them and no abbreviation."""
        if text[index] not in MARKS_AT_WORD_END:
            return False
        word = _word_before(text, index).lstrip(CLOSERS + "(\"'«“‘")
        if not PLAIN_WORD.fullmatch(word):
            return False
        if text[index] == ".":
            return len(word) >= 2 and word.lower() != "www"
        return True

    @staticmethod
    def _is_abbreviation(text: str, index: int) -> bool:
        if text[index] != ".":
            return False
        word = _word_before(text, index)
        token = word.lower().lstrip("(\"'")
        if token in ABBREVIATIONS:
            return True
        if token in NUMBER_ABBREVIATIONS:
            following = text[index + 1 :].lstrip(CLOSERS).lstrip()
            # Undecided until the next word begins: "No. " may become "No. 5".
            return not following or following[0].isdigit()
        # A single capital initial ("J. Smith") or a dotted acronym ("U.S.").
        return len(token) == 1 and token.isalpha() and word[-1].isupper()


def speakable(chunk: str) -> bool:
    """Whether a chunk holds anything to say: a mark that came after its word had
    gone out ("!" of "?!", a closing quote) is not."""
    return any(char.isalnum() for char in chunk)


def _word_before(text: str, index: int) -> str:
    """The word that ends just before ``index`` (the mark there), as written."""
    words = text[:index].split()
    return words[-1] if words else ""


def _is_dash(text: str, index: int) -> bool:
    return text[index] in "—–" or (text[index] == "-" and index > 0 and text[index - 1] == " ")
