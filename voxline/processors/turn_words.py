"""What the caller's words say about the turn: backchannels, and sentences that end it.

Whisper's transcript of the utterance so far is ready when a pause begins (the
turn-taker sends it at ``early_secs``). Three readings of it help the audio-only
end-of-turn model:

* **Backchannels.** "uh-huh", "okay", a cough spelled "Hmm." are not words that
  interrupt the bot (:func:`meaningful_words`).
* **Finished sentences.** A transcript that ends a sentence on a word a sentence
  can end with ("... used my card without asking me.") is a finished statement,
  whatever the prosody: the model judges many flat-voiced statements unfinished,
  which would make them wait the whole ``stop_secs`` (:func:`ends_sentence`).
  Whisper puts a full stop after cut-off phrases too ("I was wondering if you
  could."), so a sentence that stops on a function word ("could", "to", "the",
  "and") or a hum ("um") does not count, nor does one that trails off ("...").
"""

from __future__ import annotations

import re

BACKCHANNELS = frozenset(
    {
        *("uh", "huh", "uh-huh", "mm", "hmm", "mm-hmm", "mhm", "hm", "um", "uhm", "ah", "oh"),
        *("okay", "ok", "yeah", "yep", "yes", "right", "sure", "alright", "aha"),
        *("wow", "whoa", "ooh", "oops", "cool", "nice", "great"),
    }
)
"""Words a listener says to show they follow; they never interrupt the bot."""


FILLER_SOUND = re.compile(r"^(?:[uaoe]?[hm]*[uaoe]?[hm]+(?:-?[uaoe]?[hm]+)*|[uaoe]+h?)$")
"""Hums and grunts as Whisper spells them: uh, um, hmm, mm-hmm, uh-hum, huh, ah, oh."""

LEADING_WORDS = frozenset(
    {
        # articles, possessives and determiners that never stand alone: a noun follows
        *("a", "an", "the", "my", "your", "our", "their", "its", "every", "whose", "which"),
        # prepositions that do not end phrasal verbs ("sign in", "turn it on" end there)
        *("to", "of", "at", "for", "from", "with", "into", "onto", "between", "during"),
        *("without", "within", "toward", "towards", "than", "like", "as", "per", "via"),
        *("against", "among"),
        # conjunctions and subordinators
        *("and", "or", "but", "nor", "because", "if", "whether", "while"),
        *("although", "though", "unless", "until", "since", "whereas", "plus"),
        # hesitations Whisper writes as words
        *("um", "uh", "erm", "hmm", "mean", "basically"),
    }
)
"""Words that lead into more: a sentence never ends on one (English)."""

ANSWER_END_WORDS = frozenset(
    {
        # auxiliaries and modals: a verb usually follows, but "Yes, I do." ends there
        *("is", "are", "was", "were", "am", "be", "been", "being", "have", "has", "had"),
        *("do", "does", "did", "can", "could", "will", "would", "shall", "should", "may"),
        *("might", "must", "i'm", "i've", "i'd", "i'll", "it's", "we're", "they're"),
        *("you're", "let's", "gonna", "wanna", "gotta"),
        # subject pronouns: a verb follows
        *("i", "we", "they", "he", "she"),
        # "so": "so that ...", but "I think so."
        "so",
    }
)
"""Words a sentence seldom ends on, though a short answer may ("Yes, I do.", "I hope so.")."""

UNFINISHED_WORDS = LEADING_WORDS | ANSWER_END_WORDS
"""Words a finished sentence does not end on (English): a pause after one is mid-sentence."""

SHORT_ANSWER_WORDS = 4
"""The most words an answer ending on one of :data:`ANSWER_END_WORDS` has ("Yes, I think so.")."""

_TRAILING_OFF = ("...", "…", ",", "-", "—", ";", ":")
_LAST_WORD = re.compile(r"([a-z']+)[^a-z']*$")


def meaningful_words(text: str) -> list[str]:
    """The words of ``text`` that are not backchannels or filler sounds."""
    words = re.findall(r"[a-z']+(?:-[a-z']+)*", text.lower())
    return [w for w in words if w not in BACKCHANNELS and not FILLER_SOUND.match(w)]


def ends_sentence(text: str) -> bool:
    """Whether a transcript ends a finished sentence: a full stop, "!" or "?" after a
    word that can end one, with at least one word that is not a hum before it."""
    text = _plain(text)
    if not text or text.endswith(_TRAILING_OFF) or text[-1] not in ".!?":
        return False
    last = _last_word(text)
    if last is None or last in UNFINISHED_WORDS or FILLER_SOUND.match(last):
        return False
    return bool(meaningful_words(text))


def ends_mid_sentence(text: str) -> bool:
    """Whether a transcript stops where a sentence goes on: trailing off ("...", a comma
    or a dash), on a word that leads into more ("to", "the", "whether", "um"), or, after
    more than :data:`SHORT_ANSWER_WORDS` words, on an auxiliary, a modal or a pronoun
    ("So I was wondering if you could."; "Yes, I do." is an answer). A question or an
    exclamation never does: Whisper writes those marks from the caller's tone.
    """
    text = _plain(text)
    if not text or text.endswith(("?", "!")):
        return False
    if text.endswith(_TRAILING_OFF):
        return True
    last = _last_word(text)
    if last is None:
        return False
    if last in LEADING_WORDS or FILLER_SOUND.match(last):
        return True
    return last in ANSWER_END_WORDS and len(meaningful_words(text)) > SHORT_ANSWER_WORDS


def _plain(text: str) -> str:
    return text.strip().lower().replace("’", "'")


def _last_word(text: str) -> str | None:
    match = _LAST_WORD.search(text)
    return None if match is None else match.group(1).strip("'")
