"""How Whisper loops in a short window, told from its text alone.

Decoded in a window shorter than 30 s, Whisper sometimes says a phrase of the caller's
twice instead of what followed it, or starts the utterance over and stops. The engine
(:mod:`voxline.engines.whisper`) decodes such a text again in the full window.
"""

from __future__ import annotations

# "Hi, where is my parcel? Hi, where is my parcel": a short window can make Whisper say a
# phrase of the caller's twice instead of what followed it. Callers do repeat a word or
# two ("no, no"), rarely three in a row.
MIN_REPEATED_WORDS = 3
# "Hi, where's my parcel? Hi. Hi, where's": or start the utterance over and stop after
# its first words.
MIN_RESTARTED_WORDS = 2


def repeats_itself(text: str) -> bool:
    """Whether ``text`` says a phrase twice in a row, or ends by starting a phrase again.

    Both are how Whisper loops in a short window: :data:`MIN_REPEATED_WORDS` or more words
    said twice in a row ("Hi, where is my parcel? Hi, where is my parcel"), the end of the
    text saying that many words it said before ("Hi, where's my parcel? Hi, where's my"),
    or the end saying the first :data:`MIN_RESTARTED_WORDS` words again ("Hi, where's my
    parcel? Hi. Hi, where's"). Case and punctuation are ignored; "No, no, it is fine" does
    not repeat itself.
    """
    words = ["".join(c for c in word if c.isalnum()) for word in text.lower().split()]
    words = [word for word in words if word]
    count = len(words)
    for length in range(MIN_REPEATED_WORDS, count // 2 + 1):
        ending = words[count - length :]
        for start in range(count - 2 * length + 1):
            phrase = words[start : start + length]
            if phrase == words[start + length : start + 2 * length] or phrase == ending:
                return True
    restart = MIN_RESTARTED_WORDS
    return count >= 2 * restart and words[:restart] == words[count - restart :]
