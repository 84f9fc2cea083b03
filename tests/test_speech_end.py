"""The pause is dated from the caller's last loud frame, not from where the VAD let go.

A scripted VAD stands in for Silero (which holds "speech" tens of milliseconds past the
last word, docs/architecture.md); the turn-taker's own frames show when it heard the pause.
"""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import InputAudioRawFrame, VADUserStoppedSpeakingFrame
from pipecat.tests.utils import run_test

from voxline.processors.speech_level import FLOOR_DBFS, SpeechLevel, rms_dbfs
from voxline.processors.turn import TurnTaker, TurnTakingSettings

RATE = 16_000
FRAME = RATE // 50  # 20 ms


def tone(dbfs: float, frames: int = 1, seed: int = 0) -> list[bytes]:
    """``frames`` 20 ms frames of noise at ``dbfs`` (speech stands in as loud noise)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(frames):
        samples = rng.standard_normal(FRAME)
        samples *= 32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(samples**2))
        pieces.append(np.clip(samples, -32768, 32767).astype(np.int16).tobytes())
    return pieces


def silent(frames: int) -> list[bytes]:
    return [bytes(FRAME * 2)] * frames


class ScriptedVAD(VADAnalyzer):
    """Answers each frame with the next state of a script, as Silero would have."""

    def __init__(self, states: list[VADState]):
        super().__init__(sample_rate=RATE, params=VADParams(start_secs=0.1, stop_secs=0.2))
        self._states = iter(states)

    def num_frames_required(self) -> int:
        return FRAME

    def voice_confidence(self, buffer: bytes) -> float:
        return 0.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        return next(self._states)


async def no_transcript(audio: np.ndarray) -> str:
    return ""


async def pause_heard_after(audio: list[bytes], states: list[VADState]) -> tuple[int, float]:
    """How many frames of the caller's audio passed before the pause frame, and its
    ``stop_secs``."""
    taker = TurnTaker(
        vad=ScriptedVAD(states),
        transcribe=no_transcript,
        end_of_turn=None,
        settings=TurnTakingSettings(early_secs=0.2, stop_secs=5.0, speculate=False),
        forward_audio=True,  # the frames passed on date the pause
    )
    frames = [InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm in audio]
    down, _ = await run_test(taker, frames_to_send=frames)
    before = 0
    for frame in down:
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            return before, frame.stop_secs
        before += isinstance(frame, InputAudioRawFrame)
    raise AssertionError("no pause was heard")


def script(*runs: tuple[VADState, int]) -> list[VADState]:
    return [state for state, count in runs for _ in range(count)]


Q, SPEAK, STOP = VADState.QUIET, VADState.SPEAKING, VADState.STOPPING
# Quiet line, 0.6 s of words, then silence the VAD calls speech for 0.12 s more,
# stopping for its 0.2 s, then quiet.
HANGOVER = script((Q, 10), (SPEAK, 30), (SPEAK, 6), (STOP, 10), (Q, 10))


def test_loudness_is_judged_against_the_lines_noise():
    level = SpeechLevel()
    assert level.threshold_dbfs == FLOOR_DBFS  # nothing measured yet: a silent line
    assert level.is_speech(tone(-40)[0]) and not level.is_speech(tone(-60)[0])
    for pcm in tone(-42, 50):
        level.note_noise(pcm)
    assert level.threshold_dbfs == pytest.approx(-32, abs=0.5)
    assert not level.is_speech(tone(-40)[0]) and level.is_speech(tone(-25)[0])
    assert rms_dbfs(silent(1)[0]) == float("-inf")


async def test_the_pause_is_dated_from_the_last_loud_frame():
    audio = silent(10) + tone(-20, 30) + silent(26)
    frames_before, stop_secs = await pause_heard_after(audio, HANGOVER)
    # 0.2 s after the words (10 silent frames), while the VAD is still stopping;
    # the VAD alone would have said so 6 frames later.
    assert frames_before == 10 + 30 + 9
    assert stop_secs == pytest.approx(0.2)


async def test_a_noisy_line_counts_its_noise_as_silence():
    noise = tone(-42, 10, seed=1)
    audio = noise + tone(-15, 30) + tone(-42, 26, seed=2)
    frames_before, _ = await pause_heard_after(audio, HANGOVER)
    assert frames_before == 10 + 30 + 9


async def test_sound_after_the_words_leaves_the_timing_to_the_vad():
    # A door slams as the caller stops: loud, but the VAD hears no speech in it.
    audio = silent(10) + tone(-20, 30) + tone(-18, 16) + silent(10)
    frames_before, stop_secs = await pause_heard_after(audio, HANGOVER)
    assert frames_before == 10 + 30 + 15  # the VAD's own quiet state
    assert stop_secs == pytest.approx(0.2)


async def test_the_pause_is_dated_back_no_further_than_the_vads_hangover():
    # Words too soft to count as loud: the pause comes once the VAD has been stopping
    # for 0.06 s, dated at most 0.2 s before that.
    audio = silent(10) + tone(-70, 30) + silent(26)
    frames_before, stop_secs = await pause_heard_after(audio, HANGOVER)
    assert frames_before == 10 + 30 + 6 + 2
    assert stop_secs == pytest.approx(0.26)


async def test_one_doubtful_window_inside_the_words_is_no_pause():
    states = script((Q, 10), (SPEAK, 20), (STOP, 1), (SPEAK, 9), (STOP, 10), (Q, 10))
    audio = silent(10) + tone(-20, 20) + silent(1) + tone(-20, 9) + silent(20)
    frames_before, _ = await pause_heard_after(audio, states)
    assert frames_before == 10 + 20 + 1 + 9 + 9
