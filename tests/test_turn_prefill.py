"""The caller's words so far go to the LLM server while they speak, when nothing waits.

A scripted VAD stands in for Silero; the transcriber notes how much of the caller's audio
each transcript heard, and the frames the turn-taker pushes say what went to the LLM.
"""

from __future__ import annotations

import asyncio
import itertools

from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.tests.utils import run_test
from pipecat.utils.asyncio.task_manager import TaskManager
from test_head_start import CountingVAD
from test_speech_end import RATE, SPEAK, STOP, Q, script, silent, tone

from voxline.processors.frames import CallerWordsSoFarFrame, SpeculationStartedFrame
from voxline.processors.turn import TurnCounters, TurnTaker, TurnTakingSettings
from voxline.processors.turn_prefill import PREFILL_EVERY_SECS
from voxline.processors.turn_state import SAMPLE_RATE, CallerTurn

SPEECH_FRAMES = 100  # 2 s of words


async def call(*, engines_idle: bool, speculate: bool = True, whisper_idle: bool = True):
    """One 2 s utterance and its pause: (seconds of audio each transcript heard, the
    words pushed as words so far, the words the speculation answered)."""
    states = script((Q, 10), (SPEAK, SPEECH_FRAMES), (SPEAK, 1), (STOP, 10), (Q, 10))
    audio = silent(10) + tone(-20, SPEECH_FRAMES) + silent(21)
    heard: list[float] = []
    counters = TurnCounters()

    async def transcribe(samples) -> str:
        heard.append(round(len(samples) / RATE - 0.2, 2))  # less Whisper's trailing silence
        return f"words of {heard[-1]:.2f} s"

    taker = TurnTaker(
        vad=CountingVAD(states),
        transcribe=transcribe,
        transcriber_idle=lambda: whisper_idle,
        reply_engines_idle=lambda: engines_idle,
        end_of_turn=None,
        settings=TurnTakingSettings(early_secs=0.2, stop_secs=5.0, speculate=speculate),
        counters=counters,
    )
    frames = [InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm in audio]
    down, _ = await run_test(taker, frames_to_send=frames)
    so_far = [f.text for f in down if isinstance(f, CallerWordsSoFarFrame)]
    answered = [f.text for f in down if isinstance(f, SpeculationStartedFrame)]
    assert counters.prefills == len(so_far)  # voxline_prefills_total on /metrics
    return heard, so_far, answered


async def test_the_words_so_far_go_to_an_idle_llm_every_prefill_interval():
    heard, so_far, answered = await call(engines_idle=True)
    prefills = [secs for secs in heard if f"words of {secs:.2f} s" in so_far]
    # The VAD's pre-roll and 0.6 s of words, then every 0.6 s while the caller speaks.
    assert len(prefills) == int(2.0 / PREFILL_EVERY_SECS), heard
    assert all(b - a >= PREFILL_EVERY_SECS - 0.02 for a, b in itertools.pairwise(prefills))
    # While the caller speaks: the pause's transcript, of the whole utterance, is what
    # the speculation answers.
    assert len(heard) == len(prefills) + 1 and heard[-1] > prefills[-1] + 0.2, heard
    assert answered == [f"words of {heard[-1]:.2f} s"]


async def test_nothing_is_prefilled_while_the_llm_or_whisper_has_work():
    for engines_idle, whisper_idle in ((False, True), (True, False)):
        heard, so_far, answered = await call(engines_idle=engines_idle, whisper_idle=whisper_idle)
        assert so_far == [] and len(heard) == 1, (engines_idle, whisper_idle, heard)
        assert len(answered) == 1


async def test_without_speculation_nothing_goes_to_the_llm_before_the_commit():
    _, so_far, answered = await call(engines_idle=True, speculate=False)
    assert so_far == [] and answered == []


async def test_calls_that_find_whisper_idle_at_once_start_one_prefill_between_them():
    """Callers of a burst reach a prefill's interval in the same moment: each call finds
    Whisper idle before any prefill has queued its audio. The first prefill to run takes
    Whisper; the others wait for their next interval instead of queuing behind it (where
    the transcripts of callers who had stopped speaking would wait too)."""
    decoding: list[int] = []  # the shared Whisper's queue: utterances queued, not yet done
    heard: list[int] = []

    async def transcribe(samples) -> str:
        decoding.append(len(samples))  # queued as the call is made, as the engine does
        heard.append(len(samples))
        await asyncio.sleep(0)  # decoding: the other calls' prefills take their first step
        decoding.pop()
        return "my card was"

    def taker() -> TurnTaker:
        return TurnTaker(
            vad=CountingVAD([]),
            transcribe=transcribe,
            transcriber_idle=lambda: not decoding,
            reply_engines_idle=lambda: True,
            end_of_turn=None,
            settings=TurnTakingSettings(early_secs=0.2, stop_secs=5.0, speculate=True),
        )

    takers = [taker() for _ in range(3)]
    setup = FrameProcessorSetup(
        clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None
    )
    for each in takers:
        await each.setup(setup)
    turns = [CallerTurn(audio=bytearray(int(SAMPLE_RATE * 2 * 0.7))) for _ in takers]
    try:
        for each, turn in zip(takers, turns, strict=True):  # one moment: no task ran yet
            each._maybe_prefill(turn)
        assert all(turn.prefill is not None for turn in turns)
        await asyncio.gather(*(turn.prefill for turn in turns if turn.prefill is not None))
    finally:
        for each in takers:
            await each.cleanup()
    assert len(heard) == 1, heard  # the others found Whisper busy and queued nothing
