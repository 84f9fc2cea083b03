"""Frames voxline adds to pipecat's vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame, SystemFrame, TTSSpeakFrame


@dataclass
class TranscriptionSkippedFrame(DataFrame):
    """An utterance the STT heard but that produced no text (silence, noise, too short).

    Pushed instead of a TranscriptionFrame so that whoever tracks turns knows the
    utterance is settled and no reply will follow.

    Parameters:
        reason: why no text was produced.
        audio_secs: length of the utterance.
    """

    reason: str = ""
    audio_secs: float = 0.0


@dataclass
class SpeculationStartedFrame(SystemFrame):
    """The caller paused: their words so far went to the LLM before the turn ended.

    Parameters:
        text: the transcript the speculative reply answers.
    """

    text: str = ""


@dataclass
class CallerWordsSoFarFrame(SystemFrame):
    """What the caller has said so far, transcribed while they still speak, for the LLM
    server to compute ahead of the turn's request (:mod:`~voxline.processors.turn_prefill`).

    Parameters:
        text: the transcript of the turn's audio so far.
    """

    text: str = ""


@dataclass
class SpeculationCancelledFrame(SystemFrame):
    """The caller spoke again before the turn was committed: the speculation is void.

    Parameters:
        reason: why it was cancelled (``resumed``, ``interrupted``).
    """

    reason: str = ""


@dataclass
class EndOfTurnDecisionFrame(SystemFrame):
    """What the end-of-turn model said about the caller's words so far.

    Parameters:
        complete: the model judged the turn finished.
        probability: its probability that the turn is finished.
        latency_ms: from asking (at ``early_secs`` of silence) to the answer.
        overruled: the model judged the turn finished (or nearly), but Whisper's words
            so far stop mid-sentence, so the verdict does not count.
    """

    complete: bool = False
    probability: float = 0.0
    latency_ms: float = 0.0
    overruled: bool = False


@dataclass
class TurnCommittedFrame(SystemFrame):
    """The caller's turn ended: the reply (prepared or not) may now be heard.

    Parameters:
        reason: ``model`` (the end-of-turn model said complete) or ``silence``
            (``stop_secs`` of silence).
        reused: the speculative reply is the committed turn's reply.
    """

    reason: str = ""
    reused: bool = False


@dataclass
class SpeculationReleasedFrame(SystemFrame):
    """The audio gate let a prepared reply through at the commit.

    Parameters:
        ready_audio_secs: seconds of reply audio that were ready when the turn
            was committed.
    """

    ready_audio_secs: float = 0.0


@dataclass
class ReplySpeculationFrame(SystemFrame):
    """The LLM is starting a completion; ``speculative`` says whether its turn is open.

    Pushed by the LLM service ahead of the completion's frames, so the audio gate
    after TTS knows whether to hold what follows.
    """

    speculative: bool = False


@dataclass
class BargeInFrame(SystemFrame):
    """The caller interrupted the bot.

    Parameters:
        reason: ``duration`` or ``words``.
        after_ms: from the caller's speech onset to the interruption.
    """

    reason: str = ""
    after_ms: float = 0.0


def spoken_line(text: str, *, interruptible: bool = True) -> TTSSpeakFrame:
    """A fixed line for TTS; a non-interruptible one plays whole over a barge-in."""
    frame = TTSSpeakFrame(text)
    frame.interruptible = interruptible
    return frame
