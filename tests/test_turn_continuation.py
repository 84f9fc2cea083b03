"""A caller who goes on right after the commit, before a sound of the reply, is not
barging in: the turn they go on with is timed as the rest of the one committed.

With speculation the end-of-turn model can judge the pause after a comma complete ("I
lost my card yesterday, | what should I do?": p 0.97 in an espeak-ng voice). The
caller goes on a few hundred milliseconds later, before the reply is ready: their
words withdraw a reply nobody heard, as any barge-in does, but the pause that ends
their turn is the usual one, not the longer one that follows a caller who spoke over
the bot ("Wait, stop. I have a question."). A scripted VAD, a transcriber and a model
that answer at once make the timing exact.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import BotStartedSpeakingFrame, Frame, InputAudioRawFrame
from pipecat.tests.utils import run_test
from test_speech_end import FRAME, RATE, script, silent, tone

from voxline.engines.turn_model import TurnDecision
from voxline.processors.frames import BargeInFrame, TurnCommittedFrame
from voxline.processors.turn import TurnTaker, TurnTakingSettings
from voxline.processors.turn_end import CAREFUL_PAUSE_SECS

Q, SPEAK, STOP = VADState.QUIET, VADState.SPEAKING, VADState.STOPPING
WORDS, PAUSE, REST = 60, 25, 60  # frames: 1.2 s of words, 0.5 s of pause, the rest quiet


class PacedVAD(VADAnalyzer):
    """A scripted VAD that answers each 20 ms frame when it would have come on a call:
    the turn-taker times speech by the clock."""

    def __init__(self, states: list[VADState]):
        super().__init__(sample_rate=RATE, params=VADParams(start_secs=0.1, stop_secs=0.2))
        self._states = iter(states)
        self._next_at: float | None = None

    def num_frames_required(self) -> int:
        return FRAME

    def voice_confidence(self, buffer: bytes) -> float:
        return 0.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        now = time.monotonic()
        self._next_at = now if self._next_at is None else self._next_at + 0.02
        await asyncio.sleep(max(0.0, self._next_at - now))
        return next(self._states)


async def second_commit(reply_began_at: int | None) -> tuple[int, list[Frame]]:
    """Two stretches of words with a 0.5 s pause between, the model judging every pause
    complete: how many frames after the second stretch's last word its turn was
    committed, and every frame the turn-taker pushed. ``reply_began_at``: the frame
    before which the reply to the first stretch began to play, if it did."""
    states = script((Q, 5), (SPEAK, WORDS), (STOP, 10), (Q, PAUSE - 10))
    states += script((SPEAK, WORDS), (STOP, 10), (Q, REST - 10))
    audio = silent(5) + tone(-20, WORDS) + silent(PAUSE) + tone(-20, WORDS, seed=1) + silent(REST)

    async def transcribe(samples: np.ndarray) -> str:
        return "I lost my card yesterday, what should I do?"

    async def decide(samples: np.ndarray) -> TurnDecision:
        return TurnDecision(complete=True, probability=0.97, run_secs=0.0, wait_secs=0.0)

    taker = TurnTaker(
        vad=PacedVAD(states),
        transcribe=transcribe,
        end_of_turn=decide,
        settings=TurnTakingSettings(early_secs=0.2, stop_secs=2.0),
        forward_audio=True,  # the frames passed on date the commits
    )
    frames: list[Frame] = [
        InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm in audio
    ]
    if reply_began_at is not None:
        frames.insert(reply_began_at, BotStartedSpeakingFrame())
    down, _ = await run_test(taker, frames_to_send=frames)
    audio_frames, commits_at = 0, []
    for frame in down:
        audio_frames += isinstance(frame, InputAudioRawFrame)
        if isinstance(frame, TurnCommittedFrame):
            commits_at.append(audio_frames)
    assert len(commits_at) == 2, commits_at
    # The first stretch was committed in its pause, before the caller went on.
    assert commits_at[0] <= 5 + WORDS + PAUSE, commits_at
    return commits_at[1] - (5 + WORDS + PAUSE + WORDS), down


RESUMED_AT = 5 + WORDS + PAUSE  # the second stretch's first frame


@pytest.mark.parametrize(
    "reply_began_at",
    # Not yet when the caller goes on; or after they started, as the VAD confirms the
    # speech (0.1 s after its onset here): the caller hears a frame of it before the hold;
    # or 40 ms before they started: too soon for their words to answer it (REACTION_SECS).
    [None, RESUMED_AT, RESUMED_AT - 7],
)
async def test_going_on_before_the_reply_is_heard_keeps_the_usual_pause(reply_began_at):
    frames_after, down = await second_commit(reply_began_at)
    # The caller's words withdrew the reply they had not heard ...
    assert [frame.reason for frame in down if isinstance(frame, BargeInFrame)] == ["words"]
    # ... and their turn ended at the usual pause (0.2 s, and a frame for the verdict).
    assert frames_after * 0.02 < CAREFUL_PAUSE_SECS - 0.2, frames_after


async def test_going_on_over_a_reply_already_playing_waits_the_longer_pause():
    # The reply's audio went out 0.2 s before the caller started (0.3 s before the VAD
    # confirmed their speech): they had heard it.
    frames_after, down = await second_commit(RESUMED_AT - 15)
    assert [frame.reason for frame in down if isinstance(frame, BargeInFrame)] == ["words"]
    # Speech over the bot: callers who interrupt often go on, so the turn waits longer.
    assert frames_after * 0.02 >= CAREFUL_PAUSE_SECS - 0.02, frames_after
