"""What the turn-taker keeps: the caller's turn in progress, its settings, its counters,
and what it needs from the shared engines and the output transport."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voxline.engines.turn_model import TurnDecision

SAMPLE_RATE = 16_000
"""The pipeline's input rate: the caller's audio as the VAD, Whisper and the model hear it."""


def samples(pcm: bytes) -> np.ndarray:
    """16-bit PCM as float samples in [-1, 1), as the engines take audio."""
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


class Transcriber(Protocol):
    """What the turn-taker needs from the shared Whisper engine."""

    async def __call__(self, audio: np.ndarray) -> str: ...


class IdleCheck(Protocol):
    """Whether a shared engine (Whisper, the LLM server) has nothing to do (a request now
    runs at once)."""

    def __call__(self) -> bool: ...


class BotAudioHold(Protocol):
    """What the turn-taker needs from the output transport's hold
    (:class:`~voxline.transports.hold.OutputHold`)."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


class EndOfTurnDecider(Protocol):
    """What the turn-taker needs from the shared end-of-turn engine."""

    async def __call__(self, audio: np.ndarray) -> TurnDecision: ...


@dataclass
class TurnCounters:
    """Turn-taking events of every call in a process, for ``/metrics``.

    Plain integers: every call's processor increments them on the event loop.
    """

    speculations: int = 0
    speculations_cancelled: int = 0
    speculations_reused: int = 0
    prefills: int = 0
    commits_by_model: int = 0
    commits_by_silence: int = 0
    commits_by_question: int = 0
    commits_by_sentence: int = 0
    barge_ins: int = 0
    overheard: int = 0
    not_understood: int = 0
    decisions_complete: int = 0
    decisions_incomplete: int = 0
    decisions_overruled: int = 0
    decision_secs: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


@dataclass
class TurnTakingSettings:
    """The persona's turn settings, as the processor uses them (seconds; docs/personas.md)."""

    early_secs: float = 0.2
    stop_secs: float = 1.2
    speculate: bool = True
    allow_interruptions: bool = True
    pause_bot_on_speech: bool = True
    interrupt_min_secs: float = 0.6
    interrupt_min_words: int = 1
    overheard: str = "join"
    question_ends_turn: bool = True
    sentence_end_secs: float | None = None
    mid_sentence_waits: bool = True
    model_unsure_threshold: float | None = None
    unsure_stop_secs: float = 0.7


@dataclass
class CallerTurn:
    """The caller's turn in progress."""

    audio: bytearray = field(default_factory=bytearray)
    onset: float = 0.0  # monotonic seconds when the speech began
    stretch_onset: float = 0.0  # when the current stretch of speech (after a pause) began
    over_bot: bool = False  # began while the bot was speaking
    before_reply: bool = False  # began after a commit, before its reply began to play
    continued_secs: float = 0.0  # the committed turn's speech, when this one goes on from it
    interrupted_bot: bool = False
    holding_bot: bool = False  # the bot's audio is held while this turn may interrupt it
    opened: bool = False  # the context aggregator's turn was opened
    paused: bool = False  # early_secs of silence heard, not resumed
    silence_secs: float = 0.0
    stopping_secs: float = 0.0  # the VAD's stopping state, before the pause is confirmed
    quiet_secs: float = 0.0  # audio since the last frame loud enough to be speech
    generation: int = 0  # bumped whenever the caller resumes
    transcript: asyncio.Task[str] | None = None
    transcript_generation: int = -1
    decision: asyncio.Task[None] | None = None
    eager_text: str | None = None  # what the speculation pushed answers
    committing: bool = False
    complete_reason: str = ""  # judged complete (model, question, sentence) ...
    complete_after_secs: float = 0.0  # ... and committed at this much silence
    dropped: bool = False  # the call ended
    words_checked_at: float = 0.0
    words_check: asyncio.Task[None] | None = None
    prefill: asyncio.Task[None] | None = None  # the words so far, on their way to the LLM
    prefilled_bytes: int = 0  # how much of the audio the last prefill heard
