"""The chunker: where a streamed reply is cut for TTS, and what a voice must not read."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipecat.frames.frames import (
    AggregatedTextFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipelines import RunningPipeline

from voxline.processors.chunker import RUNWAY_MIN_WORDS, ChunkerProcessor
from voxline.processors.frames import ReplySpeculationFrame
from voxline.processors.sentence_chunker import MARKS_AT_WORD_END, SentenceChunker

LONG = " ".join(["word"] * 80)

CASES: list[tuple[str, list[str]]] = [
    # first chunk: a clause once it has four words, or a sentence
    (
        "Sure, I can help with that, just a moment.",
        ["Sure, I can help with that,", "just a moment."],
    ),
    ("Yes. Your card is blocked now.", ["Yes.", "Your card is blocked now."]),
    ("Okay, sure, no problem.", ["Okay, sure, no problem."]),
    (
        "Your balance is fine; nothing is due this month.",
        ["Your balance is fine;", "nothing is due this month."],
    ),
    (
        "Here is what I found: two payments yesterday.",
        ["Here is what I found:", "two payments yesterday."],
    ),
    (
        "Let me be clear — the branch is closed today.",
        ["Let me be clear —", "the branch is closed today."],
    ),
    (
        "I checked it for you - the card works now.",
        ["I checked it for you -", "the card works now."],
    ),
    ("Wait, what? Really!", ["Wait, what?", "Really!"]),
    # later chunks are whole sentences, not clauses
    (
        "Hello. First, second, third, fourth, fifth. Done.",
        ["Hello.", "First, second, third, fourth, fifth.", "Done."],
    ),
    # abbreviations and initials
    ("Dr. Smith will call you at noon today.", ["Dr. Smith will call you at noon today."]),
    ("Mr. and Mrs. Lee are both on the account.", ["Mr. and Mrs. Lee are both on the account."]),
    (
        "Bring an ID, e.g. a passport, to the branch.",
        ["Bring an ID, e.g. a passport,", "to the branch."],
    ),
    (
        "That is, i.e. the savings account, the one.",
        ["That is, i.e. the savings account,", "the one."],
    ),
    ("We only ship in the U.S. at the moment.", ["We only ship in the U.S. at the moment."]),
    ("Ask J. Smith at the desk.", ["Ask J. Smith at the desk."]),
    ("It opens at 9 a.m. on weekdays.", ["It opens at 9 a.m. on weekdays."]),
    (
        "We sell pens, paper, ink etc. at the shop.",
        ["We sell pens, paper,", "ink etc. at the shop."],
    ),
    ("Our office is at 12 Main St. in town.", ["Our office is at 12 Main St. in town."]),
    # "No." is an abbreviation only before a number
    ("No. I can't do that.", ["No.", "I can't do that."]),
    ("No, no, no. I'm sorry.", ["No, no, no.", "I'm sorry."]),
    ("It is form No. 5 today.", ["It is form No. 5 today."]),
    ("Call ext. 204 for help.", ["Call ext. 204 for help."]),
    # numbers, money, times
    ("The fee is $3.50 per month. That is all.", ["The fee is $3.50 per month.", "That is all."]),
    (
        "You have 1,200 points and 3.5 percent interest.",
        ["You have 1,200 points and 3.5 percent interest."],
    ),
    ("It costs €1,234.56 in total.", ["It costs €1,234.56 in total."]),
    ("The rate went from 3.9 to 4.2. Good news.", ["The rate went from 3.9 to 4.2.", "Good news."]),
    ("We open at 10:30 and close at 17:00 sharp.", ["We open at 10:30 and close at 17:00 sharp."]),
    ("Call 555-1234 any time.", ["Call 555-1234 any time."]),
    ("Version 2.0.1 fixed it.", ["Version 2.0.1 fixed it."]),
    # e-mail addresses and URLs
    (
        "Write to help.desk@northwind.example.com today.",
        ["Write to help.desk@northwind.example.com today."],
    ),
    # a web address said as a person says it (the voice says "dot" and "slash")
    (
        "Visit www.northwind.example.com/cards for details.",
        ["Visit northwind.example.com/cards for details."],
    ),
    (
        "See https://example.com/a.b?x=1. It has the form.",
        ["See example.com/a.b.", "It has the form."],
    ),
    (
        "Go to https://www.northwind.com/account/change-address/, then sign in.",
        ["Go to northwind.com/account/change-address, then sign in."],
    ),
    ("It is (https://northwind.com/help#faq) there.", ["It is (northwind.com/help) there."]),
    ("We are open 24/7, and/or online.", ["We are open 24/7,", "and/or online."]),
    # quotes and brackets stay with their sentence
    ('He said "call me." Then he left.', ['He said "call me."', "Then he left."]),
    ("Your card (the blue one.) is blocked.", ["Your card (the blue one.)", "is blocked."]),
    # markdown, lists, emoji
    ("**Good news!** Your refund is on its way.", ["Good news!", "Your refund is on its way."]),
    ("Use `reset` to start over.", ["Use reset to start over."]),
    ("Read [our guide](https://example.com/guide) first.", ["Read our guide first."]),
    ("## Options\n- Savings\n- Checking\n", ["Options", "Savings", "Checking"]),
    (
        "You can pick:\n1. Savings at 4%.\n2. Checking, no fee.\n",
        ["You can pick:", "Savings at 4%.", "Checking, no fee."],
    ),
    ("* first item\n* second item\n", ["first item", "second item"]),
    ("Great news 🎉 your card is on its way 🚚.", ["Great news your card is on its way ."]),
    ("> Quoted line here.", ["Quoted line here."]),
    ("~~old~~ new price", ["old new price"]),
    # very long text without punctuation is cut at a space before max_chars
    (LONG, [" ".join(["word"] * 50), " ".join(["word"] * 30)]),
    # nothing to say
    ("", []),
    ("   \n  ", []),
    ("🙂", []),
    ("**", []),
]


def chunks_of(text: str, pieces: list[str]) -> list[str]:
    chunker = SentenceChunker(min_first_words=4, max_chars=250)
    out: list[str] = []
    for piece in pieces:
        out.extend(chunker.push(piece))
    rest = chunker.flush()
    return out + ([rest] if rest else [])


def words(text: str) -> list[str]:
    """Split the way an LLM streams: each word with its leading space."""
    return [piece for piece in text.replace(" ", "\0 ").split("\0") if piece]


def characters(text: str) -> list[str]:
    """One character at a time, but a mark with the character after it when its word
    goes on ("help.d"): a mark that arrives last after a word ends the chunk."""
    pieces: list[str] = []
    for char in text:
        if pieces and pieces[-1][-1] in MARKS_AT_WORD_END and not char.isspace():
            pieces[-1] += char
        else:
            pieces.append(char)
    return pieces


def split_at(text: str, cuts: list[int]) -> list[str]:
    """``text`` split at ``cuts``, except right after a mark whose word goes on."""
    points = sorted(
        c
        for c in set(cuts)
        if 0 < c < len(text) and not (text[c - 1] in MARKS_AT_WORD_END and not text[c].isspace())
    )
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_chunks(text: str, expected: list[str]):
    assert chunks_of(text, [text]) == expected
    assert chunks_of(text, words(text)) == expected
    assert chunks_of(text, characters(text)) == expected, "one character at a time"


def test_the_table_is_big_enough():
    assert len(CASES) >= 40


VOCABULARY = ["Sure,", "the", "fee", "is", "$3.50.", "Dr.", "Lee", "said:", "e.g.", "10:30",
              "U.S.", "call", "help@x.com", "now!", "—", "really?", "1,200", "**ok**", "\n-",
              "item", "🎉", "www.a.com/b."]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_any_token_boundaries_give_the_same_chunks(tokens: list[str], cuts: list[int]):
    text = " ".join(tokens)
    pieces = split_at(text, cuts)
    assert chunks_of(text, pieces) == chunks_of(text, [text]) == chunks_of(text, characters(text))


@pytest.mark.parametrize(
    ("first", "rest", "expected"),
    [
        ("I'm sorry,", " let me check.", ["I'm sorry,", "let me check."]),
        ("Yes, I can do that.", " Anything else?", ["Yes, I can do that.", "Anything else?"]),
        ("Really?", "!", ["Really?"]),  # "?!": the "!" has nothing to say
        ('He said "call me."', " Then", ['He said "call me."', "Then"]),
        ("Your card is blocked now.", "", ["Your card is blocked now."]),
        ("It is well-known;", " sure.", ["It is well-known;", "sure."]),
    ],
)
def test_a_mark_after_a_word_ends_a_chunk_before_the_next_token(
    first: str, rest: str, expected: list[str]
):
    chunker = SentenceChunker(min_first_words=2)
    assert chunker.push(first) == expected[:1], "cut as the mark arrives"
    out = chunker.push(rest)
    out += [r] if (r := chunker.flush()) else []
    assert out == expected[1:]


@pytest.mark.parametrize(
    "text",
    [
        "The fee is $3.",  # "$3.50"
        "Bring an ID, e.",  # "e.g."
        "Talk to Dr.",
        "It is form No.",  # "No. 5"
        "It opens at 9 a.",
        "Write to x@northwind.",
        "Visit www.",
        "We ship in the U.",
        "The rate is 4.2.",
        "Our guide is at https:",
    ],
)
def test_a_mark_that_may_go_on_waits_for_the_next_character(text: str):
    chunker = SentenceChunker(min_first_words=10)  # no clause ends a first chunk here
    assert chunker.push(text) == []
    assert chunker.has_text


def test_take_first_words_and_reset():
    chunker = SentenceChunker()
    assert chunker.take_first_words() is None
    chunker.push("Let me look that up for")
    assert chunker.waiting_for_first
    assert chunker.take_first_words() == "Let me look that up"
    first = SentenceChunker()
    first.push("Well, let me think about")
    assert first.take_first_words() == "Well, let me think"  # every whole word, not "Well,"
    assert not chunker.waiting_for_first
    assert chunker.push(" you, okay. Next one.") == ["for you, okay.", "Next one."]
    chunker.reset()
    assert chunker.push("One, two, three, four, five") == ["One, two, three, four,"]
    assert chunker.flush() == "five"


def test_take_words_prefers_the_last_clause_boundary():
    chunker = SentenceChunker()
    assert chunker.push("Sure. ") == ["Sure."]
    assert chunker.push("I can see your account,") == []
    assert chunker.take_words(min_words=4) == "I can see your account,"  # "," ends a word
    chunker.push(" and your balance is fine, as far as I can tell, for")
    assert chunker.take_words(min_words=13) is None
    assert chunker.take_words(min_words=6) == "and your balance is fine, as far as I can tell,"
    chunker.push(" now the total is 1,")
    assert chunker.take_words(min_words=2) == "for now the total is"  # "1," may be "1,200"
    assert chunker.flush() == "1,"


class Collect(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple[float, str]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, AggregatedTextFrame):
            self.chunks.append((time.perf_counter(), frame.text))
        await self.push_frame(frame, direction)


async def test_the_first_chunk_goes_out_after_max_wait_without_a_boundary():
    collect = Collect()
    # 0.1 s a token is slow enough for the rule of replies written slowly, tested below.
    chunker = ChunkerProcessor(max_wait_ms=200, slow_first_words=None)
    async with RunningPipeline([chunker, collect]) as run:
        await run.queue(LLMFullResponseStartFrame())
        started = time.perf_counter()
        for token in ["Well", " let", " me", " think", " about"]:  # no boundary, slow tokens
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(0.1)  # the LLM's token rate
        await run.queue(*(LLMTextFrame(t) for t in [" it", " for", " you."]))
        await run.queue(LLMFullResponseEndFrame())
    texts = [text for _, text in collect.chunks]
    assert texts[0] in ("Well", "Well let", "Well let me"), texts  # whole words only
    assert " ".join(texts) == "Well let me think about it for you."
    assert collect.chunks[0][0] - started < 0.45, "the deadline did not fire"


async def test_a_first_chunk_cut_for_time_waits_for_enough_words():
    """A slow LLM: at ``max_wait_ms`` one word waits; the chunk goes with the third
    (without the rule for replies written slower than the voice, tested below)."""
    collect = Collect()
    chunker = ChunkerProcessor(max_wait_ms=100, max_wait_min_words=3, slow_first_words=None)
    async with RunningPipeline([chunker, collect]) as run:
        await run.queue(LLMFullResponseStartFrame())
        started = time.perf_counter()
        for token in ["I'm", " sorry", " to", " hear", " that"]:  # no boundary
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(0.15)  # slower than the deadline
        await run.queue(LLMTextFrame(" you"), LLMTextFrame(" lost it."))
        await run.queue(LLMFullResponseEndFrame())
    texts = [text for _, text in collect.chunks]
    # "I'm sorry to" is not known to be three whole words before " hear" comes.
    assert texts[0] == "I'm sorry to", texts
    assert 0.45 - 0.05 < collect.chunks[0][0] - started < 0.45 + 0.25, "cut too early or late"
    assert " ".join(texts) == "I'm sorry to hear that you lost it."


def test_the_words_of_a_first_chunk_cut_for_time_are_at_least_one():
    with pytest.raises(ValueError, match="max_wait_min_words"):
        ChunkerProcessor(max_wait_min_words=0)


SLOW_SENTENCE = " I can see your account, and your balance is one hundred dollars today."


async def reply_with_a_slow_second_sentence(
    chunker: ChunkerProcessor, *, held: bool = False, commit_after_tokens: int | None = None
):
    """A short first sentence, then a long one written slower than it is spoken; ``held``:
    a speculative reply, committed after ``commit_after_tokens`` tokens (None: never)."""
    collect = Collect()
    committed_at = None
    async with RunningPipeline([chunker, collect]) as run:
        if held:
            await run.queue(ReplySpeculationFrame(speculative=True))
        await run.queue(LLMFullResponseStartFrame(), LLMTextFrame("Sure, of course."))
        for index, token in enumerate(SLOW_SENTENCE.split(" ")[1:]):
            if index == commit_after_tokens:
                committed_at = time.perf_counter()
                await run.queue(UserStoppedSpeakingFrame())
            await run.queue(LLMTextFrame(" " + token))
            await asyncio.sleep(0.1)  # the LLM's token rate
        last_token_at = time.perf_counter()
        await run.queue(LLMFullResponseEndFrame())
    return collect.chunks, last_token_at, committed_at


async def test_a_sentence_is_cut_before_the_audio_sent_runs_out():
    # "Sure, of course." lasts 1.6 s at 10 characters a second; 0.8 s before it ends
    # (8 tokens in) the words of the next sentence so far go out at their last clause
    # boundary.
    chunks, last_token_at, _ = await reply_with_a_slow_second_sentence(
        ChunkerProcessor(min_first_words=4, speech_chars_per_sec=10, runway_lead_ms=800)
    )
    texts = [text for _, text in chunks]
    assert texts[0] == "Sure, of course."
    assert texts[1] == "I can see your account,", texts
    assert chunks[1][0] < last_token_at, "the cut waited for the sentence's end"
    assert " ".join(texts) == "Sure, of course." + SLOW_SENTENCE


async def test_a_held_reply_is_cut_for_the_runway_only_from_the_commit():
    """A speculative reply is heard from the commit: before it, nothing runs out."""
    never_committed, _, _ = await reply_with_a_slow_second_sentence(
        ChunkerProcessor(min_first_words=4, speech_chars_per_sec=10, runway_lead_ms=800),
        held=True,
    )
    assert [text for _, text in never_committed] == ["Sure, of course.", SLOW_SENTENCE.strip()]

    # Committed after three tokens (0.3 s): "Sure, of course." runs out 1.6 s later, and
    # the sentence still being written is cut 0.8 s before that.
    chunks, _, committed_at = await reply_with_a_slow_second_sentence(
        ChunkerProcessor(min_first_words=4, speech_chars_per_sec=10, runway_lead_ms=800),
        held=True,
        commit_after_tokens=3,
    )
    texts = [text for _, text in chunks]
    assert texts[1] == "I can see your account,", texts
    assert committed_at is not None
    assert chunks[1][0] - committed_at > 0.7, "cut before the held audio was heard"


async def test_without_a_runway_lead_chunks_are_whole_sentences():
    chunks, _, _ = await reply_with_a_slow_second_sentence(
        ChunkerProcessor(min_first_words=4, runway_lead_ms=None)
    )
    assert [text for _, text in chunks] == ["Sure, of course.", SLOW_SENTENCE.strip()]


async def sure_and_then(tokens: list[str], *, chars_per_sec: float) -> list[tuple[float, str]]:
    """(when, text) of the chunks of a reply that says "Sure," at once (``min_first_words:
    1``) and goes on with ``tokens``, one every 0.1 s; the runway lead is 800 ms."""
    collect = Collect()
    chunker = ChunkerProcessor(
        min_first_words=1, speech_chars_per_sec=chars_per_sec, runway_lead_ms=800
    )
    async with RunningPipeline([chunker, collect]) as run:
        await run.queue(LLMFullResponseStartFrame(), LLMTextFrame("Sure,"))
        for token in tokens:
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(0.1)  # the LLM's token rate
        await run.queue(LLMFullResponseEndFrame())
    return collect.chunks


async def test_a_one_word_first_clause_goes_alone_but_runway_cuts_keep_four_words():
    """``min_first_words: 1`` sends "Sure," at once; while the caller has more than half
    the lead to hear, a cut for the runway waits for RUNWAY_MIN_WORDS words ("I can see,
    your", not "I")."""
    # "Sure," lasts 1.25 s at 4 characters a second: the cut is due 0.45 s after it, and
    # any whole word would go from 0.85 s.
    rest = "I can see, your account and your balance is fine today."
    chunks = await sure_and_then([" " + word for word in rest.split()], chars_per_sec=4)
    texts = [text for _, text in chunks]
    assert texts[0] == "Sure,", texts
    assert len(texts) > 2 and all(len(text.split()) >= RUNWAY_MIN_WORDS for text in texts[1:-1])
    assert " ".join(texts) == "Sure, " + rest


async def test_a_runway_cut_takes_any_whole_word_when_the_caller_is_about_to_run_out():
    """A long word written token by token ("07:00-18:00,") keeps a fourth whole word from
    coming before the caller runs out of audio: half the lead before, the whole words so
    far go, instead of a stop in the voice while the LLM writes."""
    # "Sure," lasts 1 s at 5 characters a second; the cut is due 0.2 s after it, and any
    # whole word goes from 0.6 s.
    tokens = [" Our", " hours", " are", " 07", ":", "00", "-", "18", ":", "00,", " Monday", " on."]
    chunks = await sure_and_then(tokens, chars_per_sec=5)
    (first_at, first), (cut_at, cut), *_ = chunks
    assert (first, cut) == ("Sure,", "Our hours are"), chunks
    assert 0.6 - 0.05 < cut_at - first_at < 1.0, "cut before half the lead, or after the end"
    assert " ".join(text for _, text in chunks) == "Sure, " + "".join(tokens).strip()


async def test_a_sentence_that_ends_while_the_cut_waits_gives_the_next_words_their_time():
    """The cut waits for a fourth word, a sentence ends meanwhile and adds its audio: the
    words after it are not cut short at the moment the audio before would have run out."""
    # "Sure," lasts 1 s at 5 characters a second: the cut is due 0.2 s after it, and any
    # whole word would go from 0.6 s; "I can do that." adds 2.8 s at 0.3 s.
    tokens = [" I", " can", " do", " that.", " Your", " card", " is", " on", " its", " way."]
    texts = [text for _, text in await sure_and_then(tokens, chars_per_sec=5)]
    assert texts == ["Sure,", "I can do that.", "Your card is on its way."], texts


async def first_chunk_of(chunker: ChunkerProcessor, text: str, token_secs: float) -> str:
    """The first chunk of ``text`` streamed a word every ``token_secs``."""
    collect = Collect()
    async with RunningPipeline([chunker, collect]) as run:
        await run.queue(LLMFullResponseStartFrame())
        for token in words(text):
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(token_secs)  # the LLM's token rate
        await run.queue(LLMFullResponseEndFrame())
    return collect.chunks[0][1]


async def test_a_reply_written_slowly_starts_with_a_longer_first_chunk():
    """Written slower than three times the voice (an LLM shared by many calls), a first clause
    of two words would run out before the next words come: the first chunk waits for
    ``slow_first_words``; written fast, the short clause goes alone."""
    text = "I'm sorry, but I am unable to do that for you today."
    fast = await first_chunk_of(ChunkerProcessor(), text, token_secs=0.01)
    assert fast == "I'm sorry,"
    # ~5 characters a word every 0.2 s: 25 characters a second, under 2 x 20
    slow = await first_chunk_of(ChunkerProcessor(), text, token_secs=0.2)
    assert len(slow.split()) >= 6, slow
    assert slow == "I'm sorry, but I am unable", slow
    off = await first_chunk_of(ChunkerProcessor(slow_first_words=None), text, token_secs=0.2)
    assert off == "I'm sorry,"
