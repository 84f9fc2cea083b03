"""Fixed lines kept as audio: a persona's greeting and phrases, synthesized once per voice.

The greeting and the phrases (filler, apology, goodbye, transfer, idle) are the same words
on every call. The first time a call speaks one of them whole, its voice keeps the audio,
and every later request for exactly that text plays it from memory: no synthesis, no
worker or server request, and no stall between the line's sentences while the voice is
busy with other calls. A line cut short (a barge-in, a failed synthesis) is not kept.

No pipecat imports here: engines are usable and benchmarkable on their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

import numpy as np

MAX_LINES = 256
"""Lines kept per voice (a line is ~100-300 KB of audio: at most ~80 MB)."""


class LineMemory:
    """One voice's fixed lines as float audio at the voice's rate, by their text.

    Surrounding spaces of a text are ignored; otherwise it must match exactly.

    Args:
        max_lines: lines kept at most; beyond it a line is synthesized on every request.
    """

    def __init__(self, max_lines: int = MAX_LINES):
        self.max_lines = max_lines
        self.played = 0
        """Requests answered from memory, since the voice loaded (for metrics)."""
        self._wanted: set[str] = set()
        self._audio: dict[str, np.ndarray] = {}

    def __contains__(self, text: str) -> bool:
        return text.strip() in self._audio

    def __len__(self) -> int:
        return len(self._audio)

    def want(self, lines: Iterable[str]) -> None:
        """Mark lines to keep once a call has spoken them whole."""
        self._wanted.update(text for line in lines if (text := line.strip()))

    def wants(self, text: str) -> bool:
        """Whether ``text`` is a wanted line with no audio yet, and there is room for it."""
        key = text.strip()
        return key in self._wanted and key not in self._audio and len(self) < self.max_lines

    def recall(self, text: str) -> np.ndarray | None:
        """The line's audio, counted as played, or None if it is not kept."""
        audio = self._audio.get(text.strip())
        if audio is not None:
            self.played += 1
        return audio

    async def play(
        self,
        text: str,
        speak: Callable[[], AsyncIterator[np.ndarray]],
        *,
        min_samples: int = 1,
    ) -> AsyncIterator[np.ndarray]:
        """The line from memory, or the audio of ``speak()``, kept when ``text`` is a
        wanted line and ``speak()`` ran to its end with at least ``min_samples``.

        Closing this iterator early (a barge-in) closes ``speak()``'s at once.
        """
        remembered = self.recall(text)
        if remembered is not None:
            yield remembered
            return
        take: list[np.ndarray] | None = [] if self.wants(text) else None
        async with contextlib.aclosing(speak()) as pieces:
            async for piece in pieces:
                if take is not None:
                    take.append(piece)
                yield piece
        if take and self.wants(text):
            audio = np.concatenate(take)
            if audio.size >= min_samples:
                self._audio[text.strip()] = audio
