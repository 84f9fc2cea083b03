"""The simulated caller's voice: Piper or espeak-ng, at a chosen speed.

Clips are made before the calls start (synthesis is not part of what is measured)
and kept per (voice, text), so a suite that repeats a phrase, or runs with
``--repeat``, synthesizes it once. Piper runs in worker threads; espeak-ng is its
own process.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from functools import cache
from pathlib import Path

import numpy as np

from voxline.scenarios.spec import Voice

DEFAULT_PIPER_VOICE = "en_US-joe-medium"
DEFAULT_ESPEAK_VOICE = "en-us"
ESPEAK_WORDS_PER_MINUTE = 160
"""espeak-ng's pace at speed 1.0 (its own default is 175, fast for a phone caller)."""
LEAD_SECS = 0.2
"""Silence before the words, as a caller draws breath."""


class VoiceError(RuntimeError):
    """The caller's voice cannot speak (a missing voice, espeak-ng failing)."""


@cache
def _piper_voice(name: str):  # -> piper.PiperVoice
    from piper import PiperVoice

    from voxline.models import PiperVoiceFiles, resolve_piper

    files = resolve_piper(name)
    if not isinstance(files, PiperVoiceFiles):
        raise VoiceError(f"Piper voice {name} is not installed here")
    return PiperVoice.load(str(files.model), config_path=str(files.config)), threading.Lock()


def _piper(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    piper, lock = _piper_voice(voice.name or DEFAULT_PIPER_VOICE)
    config = SynthesisConfig(length_scale=1.0 / voice.speed)
    with lock:  # one ONNX session per voice, one synthesis at a time on it
        chunks = list(piper.synthesize(text, syn_config=config))
    rate = piper.config.sample_rate
    pcm = np.concatenate([np.frombuffer(c.audio_int16_bytes, dtype=np.int16) for c in chunks])
    return pcm.astype(np.float32) / 32768.0, rate


def _espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    from voxline.bench.callers import SAMPLE_RATE, SpeechError, espeak

    spoken = (voice.name or DEFAULT_ESPEAK_VOICE, round(ESPEAK_WORDS_PER_MINUTE * voice.speed), 50)
    with tempfile.TemporaryDirectory(prefix="voxline-espeak-") as tmp:
        try:
            return espeak(text, spoken, Path(tmp)), SAMPLE_RATE
        except SpeechError as exc:
            raise VoiceError(str(exc)) from None


def _with_lead(audio: np.ndarray, rate: int) -> np.ndarray:
    return np.concatenate([np.zeros(int(LEAD_SECS * rate), dtype=np.float32), audio])


class CallerVoices:
    """Synthesizes and keeps the clips every ``say`` turn of a suite needs."""

    def __init__(self) -> None:
        self._clips: dict[tuple[Voice, str], tuple[np.ndarray, int]] = {}

    async def prepare(self, wanted: list[tuple[Voice, str]]) -> None:
        """Synthesize every (voice, text) not made yet, two at a time.

        Raises:
            VoiceError: a voice cannot speak.
        """
        missing = sorted({item for item in wanted if item not in self._clips}, key=str)
        slots = asyncio.Semaphore(2)

        async def make(voice: Voice, text: str) -> None:
            async with slots:
                speak = _piper if voice.engine == "piper" else _espeak
                audio, rate = await asyncio.to_thread(speak, text, voice)
                self._clips[(voice, text)] = (_with_lead(audio, rate), rate)

        await asyncio.gather(*(make(voice, text) for voice, text in missing))

    def clip(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        """The clip of ``text`` in ``voice`` (after :meth:`prepare`)."""
        return self._clips[(voice, text)]
