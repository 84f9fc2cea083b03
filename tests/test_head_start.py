"""The utterance goes to Whisper before the pause is confirmed: sooner when Whisper is idle.

A scripted VAD stands in for Silero; the transcriber notes how many 20 ms frames of the
caller's audio the turn-taker had analysed when it was asked.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.tests.utils import run_test
from test_speech_end import RATE, SPEAK, STOP, Q, ScriptedVAD, script, silent, tone

from voxline.processors.turn import TurnTaker, TurnTakingSettings

WORDS_END = 10 + 30  # frames: a quiet line, then 0.6 s of words


class CountingVAD(ScriptedVAD):
    def __init__(self, states):
        super().__init__(states)
        self.analysed = 0

    async def analyze_audio(self, buffer: bytes):
        await asyncio.sleep(0.001)  # as a real call's frames would, let spawned work run
        self.analysed += 1
        return await super().analyze_audio(buffer)


async def asked_after(whisper_idle: bool) -> list[int]:
    """The frames after the words' last one at which each transcript was asked for."""
    # Silero holds "speech" one frame past the words, then stops for 0.2 s.
    states = script((Q, 10), (SPEAK, 30), (SPEAK, 1), (STOP, 10), (Q, 10))
    audio = silent(10) + tone(-20, 30) + silent(21)
    vad = CountingVAD(states)
    asked: list[int] = []

    async def transcribe(samples: np.ndarray) -> str:
        asked.append(vad.analysed - WORDS_END)
        return "What time do you open?"

    taker = TurnTaker(
        vad=vad,
        transcribe=transcribe,
        transcriber_idle=lambda: whisper_idle,
        end_of_turn=None,
        settings=TurnTakingSettings(early_secs=0.2, stop_secs=5.0),
    )
    frames = [InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm in audio]
    await run_test(taker, frames_to_send=frames)
    return asked


async def test_an_idle_whisper_gets_the_words_after_50_ms_of_quiet():
    # The third quiet frame (60 ms): the VAD is stopping and the line has been quiet 50 ms.
    assert await asked_after(whisper_idle=True) == [3]


async def test_a_busy_whisper_gets_them_halfway_to_early_secs():
    # Other calls' words are being decoded: the head start waits for 0.1 s of quiet that
    # the VAD has been calling silence for 60 ms (the fifth quiet frame).
    assert await asked_after(whisper_idle=False) == [5]
