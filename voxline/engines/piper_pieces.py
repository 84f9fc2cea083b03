"""Cutting Piper's work into pieces, and its audio's leading silence.

Piper voices a whole sentence per model run, so :class:`~voxline.engines.piper.PiperEngine`
cuts long sentences (at a clause mark, else a word boundary) to keep every run short, and
can voice a reply's first words alone; it trims the quiet before a reply's first sound,
which the caller would otherwise wait through. Pure functions of phonemes and PCM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CLAUSE_MARKS = frozenset(",;:—–-")
ONSET_LEVEL = 0.005
"""Of full scale (about -46 dBFS; Piper's audio is peak-normalised): quieter samples
before a reply's first sound are silence the caller would wait through."""
ONSET_MARGIN_SECS = 0.01
"""Kept before the first sample at ``ONSET_LEVEL``, so a soft onset is not clipped."""


def trim_leading_silence(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit ``pcm`` from ``ONSET_MARGIN_SECS`` before its first audible sample."""
    samples = np.frombuffer(pcm, dtype=np.int16)
    audible = np.flatnonzero(np.abs(samples.astype(np.int32)) > ONSET_LEVEL * 32767)
    if not audible.size:
        return pcm
    start = max(0, int(audible[0]) - int(ONSET_MARGIN_SECS * sample_rate))
    return samples[start:].tobytes()


def split_phonemes(phonemes: Sequence[str], max_phonemes: int | None) -> list[list[str]]:
    """Cut one sentence's phonemes into pieces of at most ``max_phonemes``.

    A cut goes after a clause mark (``,`` ``;`` ``:`` a dash) if one lies in the last
    two thirds of the window, else at the last word boundary, else (one huge word)
    at the limit.
    """
    phonemes = list(phonemes)
    if max_phonemes is None or len(phonemes) <= max_phonemes:
        return [phonemes]
    pieces: list[list[str]] = []
    start = 0
    while len(phonemes) - start > max_phonemes:
        end = start + max_phonemes
        floor = start + max_phonemes // 3
        spaces = [i for i in range(end - 1, floor, -1) if phonemes[i] == " "]
        clause = next((i for i in spaces if phonemes[i - 1] in _CLAUSE_MARKS), None)
        cut = clause if clause is not None else (spaces[0] if spaces else end)
        pieces.append(phonemes[start:cut])
        start = cut + 1 if phonemes[cut] == " " else cut
    pieces.append(phonemes[start:])
    return [piece for piece in pieces if piece]


def split_first(phonemes: Sequence[str], max_phonemes: int) -> list[list[str]]:
    """``phonemes`` as its first words (at most ``max_phonemes``, cut as
    :func:`split_phonemes` cuts) and the rest, or whole if it is that short already."""
    phonemes = list(phonemes)
    head = split_phonemes(phonemes, max_phonemes)[0]
    rest = phonemes[len(head) :]
    if rest and rest[0] == " ":
        rest = rest[1:]
    return [head, rest] if rest else [head]
