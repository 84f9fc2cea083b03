"""A verdict that arrives late, as the caller goes on, does not end half the turn.

Under load the end-of-turn model answers from a queue shared by every call; at eight
calls on two cores a verdict asked at the pause came back 0.7 s later, in the 0.15 s in
which the VAD had heard the caller start again but had not yet called it speech. The
turn was committed on its first half ("So I was wondering if you could."), the bot
answered that, and the second half was spoken over its answer. A scripted VAD and a
model that answers at that very moment reproduce it.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import InputAudioRawFrame, TranscriptionFrame
from pipecat.tests.utils import run_test
from test_speech_end import FRAME, RATE, script, silent, tone

from voxline.engines.turn_model import TurnDecision
from voxline.processors.frames import EndOfTurnDecisionFrame, TurnCommittedFrame
from voxline.processors.turn import TurnTaker, TurnTakingSettings

Q, START, SPEAK, STOP = VADState.QUIET, VADState.STARTING, VADState.SPEAKING, VADState.STOPPING


class ResumingVAD(VADAnalyzer):
    """A scripted VAD that says when the caller starts again, and lets the event loop run
    there so that a verdict waiting for that moment lands while the VAD is unsure."""

    def __init__(self, states: list[VADState], resumed: asyncio.Event):
        super().__init__(sample_rate=RATE, params=VADParams(start_secs=0.16, stop_secs=0.2))
        self._states = iter(states)
        self._resumed = resumed

    def num_frames_required(self) -> int:
        return FRAME

    def voice_confidence(self, buffer: bytes) -> float:
        return 0.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        state = next(self._states)
        if state == START and not self._resumed.is_set():
            self._resumed.set()  # the verdict's task runs now, mid-onset
        for _ in range(20):
            await asyncio.sleep(0)  # as Silero's thread lets the call's tasks run
        return state


async def test_a_verdict_landing_as_the_caller_resumes_waits_for_the_vad():
    # 0.6 s of words, a 0.8 s pause, 0.16 s of onset the VAD is unsure of, 0.6 s more
    # words, then the silence after the whole question.
    states = script(
        (Q, 5), (SPEAK, 30), (STOP, 10), (Q, 30), (START, 8), (SPEAK, 30), (STOP, 10), (Q, 60)
    )
    audio = silent(5) + tone(-20, 30) + silent(40) + tone(-20, 38, seed=1) + silent(70)
    resumed = asyncio.Event()
    transcribed: list[float] = []

    async def transcribe(samples: np.ndarray) -> str:
        transcribed.append(samples.size / RATE)
        return "words"

    async def decide(samples: np.ndarray) -> TurnDecision:
        await resumed.wait()  # asked at the first pause, answered as the caller resumes
        return TurnDecision(complete=True, probability=0.9, run_secs=0.0, wait_secs=0.7)

    taker = TurnTaker(
        vad=ResumingVAD(states, resumed),
        transcribe=transcribe,
        end_of_turn=decide,
        settings=TurnTakingSettings(early_secs=0.2, stop_secs=2.0),
    )
    frames = [InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm in audio]
    down, _ = await run_test(taker, frames_to_send=frames)
    commits = [frame for frame in down if isinstance(frame, TurnCommittedFrame)]
    transcripts = [frame for frame in down if isinstance(frame, TranscriptionFrame)]
    assert len(commits) == 1 and len(transcripts) == 1, (commits, transcripts)
    # The one transcript is of the whole question, both halves and the pause between.
    assert max(transcribed) > 1.8, transcribed


async def commit_reasons(text: str, *, mid_sentence_waits: bool = True) -> list[str]:
    """The commits of one utterance that the model judges complete (p 0.94) and Whisper
    hears as ``text``: 0.6 s of words, then 2.4 s of silence (``stop_secs`` 2 s)."""
    states = script((Q, 5), (SPEAK, 30), (STOP, 10), (Q, 110))
    audio = silent(5) + tone(-20, 30) + silent(120)

    async def transcribe(samples: np.ndarray) -> str:
        return text

    async def decide(samples: np.ndarray) -> TurnDecision:
        return TurnDecision(complete=True, probability=0.94, run_secs=0.0, wait_secs=0.0)

    taker = TurnTaker(
        vad=ResumingVAD(states, asyncio.Event()),
        transcribe=transcribe,
        end_of_turn=decide,
        settings=TurnTakingSettings(
            early_secs=0.2, stop_secs=2.0, mid_sentence_waits=mid_sentence_waits
        ),
    )
    frames = [InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm in audio]
    down, _ = await run_test(taker, frames_to_send=frames)
    decisions = [frame for frame in down if isinstance(frame, EndOfTurnDecisionFrame)]
    assert len(decisions) == 1
    reasons = [frame.reason for frame in down if isinstance(frame, TurnCommittedFrame)]
    assert decisions[0].overruled == (reasons == ["silence"]), (decisions, reasons)
    return reasons


async def test_words_cut_off_mid_sentence_set_the_models_verdict_aside():
    # Through the phone line the model judged this first half complete (p 0.94) and the
    # bot answered half a sentence; the words say the caller is not done.
    assert await commit_reasons("So I was wondering if you could.") == ["silence"]
    assert await commit_reasons("I need to talk to someone about um") == ["silence"]
    # A finished sentence, a short answer, a question: the verdict stands.
    assert await commit_reasons("I lost my card yesterday.") == ["model"]
    assert await commit_reasons("Yes, I do.") == ["model"]
    assert await commit_reasons("I was wondering if you could?") == ["model"]
    # The persona can leave the verdict to the model alone.
    cut_off = "So I was wondering if you could."
    assert await commit_reasons(cut_off, mid_sentence_waits=False) == ["model"]
