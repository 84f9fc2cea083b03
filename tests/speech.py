"""Speech helpers for tests: synthesize callers, normalise text, word error rate."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import jiwer
import numpy as np
import soundfile
from num2words import num2words

from voxline.engines.piper import PiperEngine
from voxline.models import PiperVoiceFiles, resolve_piper
from voxline.transports.levels import is_voiced


@cache
def caller_voice() -> PiperEngine:
    """The packaged Piper voice, loaded once per test session."""
    files = resolve_piper("en_US-joe-medium")
    assert isinstance(files, PiperVoiceFiles)
    return PiperEngine(files.model, files.config)


def synthesize_wav(text: str, path: Path, *, lead_secs: float = 0.3) -> Path:
    """Write ``text`` spoken by Piper to ``path`` (22 050 Hz mono) after a little silence."""
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(text), dtype=np.int16)
    lead = np.zeros(int(lead_secs * voice.sample_rate), dtype=np.int16)
    soundfile.write(str(path), np.concatenate([lead, pcm]), voice.sample_rate, subtype="PCM_16")
    return path


def _spell_number(match: re.Match[str]) -> str:
    number = match.group(0).replace(",", "")
    try:
        return " " + num2words(float(number) if "." in number else int(number)) + " "
    except (ValueError, OverflowError):
        return number


def normalize(text: str) -> str:
    """Lower case, numbers spelled out, punctuation removed, white space folded."""
    text = text.lower().replace("%", " percent ").replace("&", " and ")
    text = re.sub(r"\$(\d[\d,]*(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?", _spell_number, text)
    text = text.replace("-", " ")
    text = re.sub(r"[^a-z' ]+", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after normalisation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))


def rms_dbfs(samples: np.ndarray) -> float:
    """Loudness of int16 or float audio in dBFS."""
    audio = samples.astype(np.float64)
    if samples.dtype == np.int16:
        audio /= 32768.0
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    return 20 * np.log10(max(rms, 1e-12))


def voiced_secs(samples: np.ndarray, rate: int) -> float:
    """Seconds of int16 ``samples`` that are voiced, counted in 20 ms frames."""
    size = rate // 50
    frames = samples[: samples.size // size * size].reshape(-1, size)
    return sum(is_voiced(frame) for frame in frames) / 50


def speech_16k(text: str) -> np.ndarray:
    """``text`` spoken by Piper as 16 kHz float32 samples, ready for Whisper."""
    import soxr

    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(text), dtype=np.int16).astype(np.float32) / 32768
    return soxr.resample(pcm, voice.sample_rate, 16_000).astype(np.float32)
