"""What the simulated callers say: espeak-ng voices, utterances, and each caller's script.

Callers speak with espeak-ng (a Debian package) in eight voices of several speeds
and pitches, never the Piper voice the bot speaks with: Whisper hears its own
voice's synthesis too well to stand for a caller. About a third of the
utterances pause in mid-sentence after words that an end-of-turn model judges
unfinished. The same seed gives every system under test the same callers.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000
"""The rate caller clips are made at."""

Voice = tuple[str, int, int]
"""An espeak-ng voice: name (with variant), words per minute, pitch."""

VOICES: list[Voice] = [
    ("en-us", 140, 42),
    ("en-gb-scotland", 160, 55),
    ("en-029", 150, 62),
    ("en-us-nyc+f4", 175, 70),
    ("en-gb-x-rp+m3", 145, 35),
    ("en-us+Annie", 185, 50),
    ("en-gb+Gene", 125, 45),
    ("en-us+f2", 165, 65),
]

PAUSES = (0.5, 2.0)
"""Range of a caller's pause (s) after the bot's answer, before its next turn."""


class SpeechError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class Utterance:
    """What a caller says: one part, or two parts with ``pause`` seconds of silence."""

    first: str
    second: str = ""
    pause: float = 0.0

    @property
    def text(self) -> str:
        return f"{self.first} {self.second}".strip()

    @property
    def paused(self) -> bool:
        return bool(self.second)


# Every first half before a pause ends where the Smart Turn model hears an unfinished
# turn (p(complete) <= 0.15 for all seven voices, checked with the engine alone on the
# 16 kHz clips; through the phone line, at eight calls, the server's engine judged "So I
# was wondering if you could" complete with p = 0.94: docs/benchmarks.md).
# First halves that end in a falling tone ("So I was wondering if", "... and") are
# judged complete as often as not, so a pause there tests the model, not speculation.
UTTERANCES = [
    Utterance("I was wondering if you could", "tell me when the branch opens on Saturday", 0.8),
    Utterance("What is my account balance?"),
    Utterance("My card number is um", "actually I just want to know my balance", 0.7),
    Utterance("I lost my card yesterday. What should I do?"),
    Utterance("Could you tell me um", "how long a new card takes to arrive", 0.9),
    Utterance("Can I speak to a human agent please?"),
    Utterance("I need to talk to someone about um", "a payment I do not recognize", 0.6),
    Utterance("Do you charge a fee for international transfers?"),
    Utterance("I was hoping you could", "block my card because I lost it", 1.0),
    Utterance("Is the branch open on Sunday?"),
    Utterance("I want to send money to um", "my sister in Canada", 0.8),
    Utterance("My card was declined at the store. Why?"),
    Utterance("I would like to know whether", "the branch is open on Sunday", 0.7),
    Utterance("How long does a new card take to arrive?"),
    Utterance("So I was wondering if you could", "put me through to a human agent", 0.9),
    Utterance("What time does the branch open on Saturday?"),
    Utterance("Can you read me my last three transactions?"),
    Utterance("What are your opening hours during the week?"),
    Utterance("I think someone used my card without asking me."),
    Utterance("How do I change the address on my account?"),
]


def espeak(text: str, voice: Voice, tmp: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng at 16 kHz, without its silence before and after.

    Raises:
        SpeechError: espeak-ng is not installed or failed.
    """
    program = shutil.which("espeak-ng")
    if program is None:
        raise SpeechError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    name, speed, pitch = voice
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmp) as wav:
        command = [program, "-v", name, "-s", str(speed), "-p", str(pitch), "-w", wav.name]
        try:
            subprocess.run([*command, text], check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            raise SpeechError(f"espeak-ng failed: {exc.stderr.decode(errors='replace')}") from None
        samples, rate = soundfile.read(wav.name, dtype="float32")
    audio = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0] : loud[-1] + 1]


def silence(secs: float) -> np.ndarray:
    """``secs`` of silence at :data:`SAMPLE_RATE`."""
    return np.zeros(round(secs * SAMPLE_RATE), dtype=np.float32)


def caller_clip(utterance: Utterance, voice: Voice, tmp: Path) -> np.ndarray:
    """The caller's clip: the voiced parts, the pause between, 0.2 s of silence after."""
    parts = [espeak(utterance.first, voice, tmp)]
    if utterance.paused:
        parts += [silence(utterance.pause), espeak(utterance.second, voice, tmp)]
    return np.concatenate([*parts, silence(0.2)])


@dataclass(frozen=True)
class Script:
    """One caller: a voice, the utterances of its turns, and the pauses before turns 2..."""

    caller: int
    voice: Voice
    utterances: tuple[int, ...]
    pauses: tuple[float, ...]

    def paused_turns(self) -> int:
        """How many of its utterances pause in mid-sentence."""
        return sum(UTTERANCES[u].paused for u in self.utterances)


def script(caller: int, turns: int, seed: int) -> Script:
    """Caller number ``caller``'s script; the same for every system with the same seed."""
    rng = random.Random(f"{seed}:{caller}")
    return Script(
        caller=caller,
        voice=rng.choice(VOICES),
        utterances=tuple(rng.sample(range(len(UTTERANCES)), turns)),
        pauses=tuple(round(rng.uniform(*PAUSES), 2) for _ in range(turns - 1)),
    )


class Clips:
    """Caller clips made once per (utterance, voice) and reused by every system.

    Args:
        tmp: a folder for espeak-ng's temporary files.
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._clips: dict[tuple[int, Voice], np.ndarray] = {}

    def get(self, utterance: int, voice: Voice) -> np.ndarray:
        """The clip of utterance number ``utterance`` in ``voice`` (16 kHz float)."""
        key = (utterance, voice)
        if key not in self._clips:
            self._clips[key] = caller_clip(UTTERANCES[utterance], voice, self.tmp)
        return self._clips[key]
