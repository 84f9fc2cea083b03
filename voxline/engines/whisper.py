"""The shared Whisper engine: one faster-whisper model for every call in the process.

Stock pipecat loads a Whisper model per call; voxline loads one and hands it to
every call's STT processor. Transcription runs in worker threads owned by this
engine (CTranslate2 releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
MIN_SPEECH_SECS = 0.1
# Below this RMS (about -50 dBFS) an utterance is silence: Whisper would hallucinate
# "Thank you." on it, so it is never decoded.
SILENCE_RMS = 10 ** (-50 / 20)
NO_SPEECH_PROB = 0.6
MIN_AVG_LOGPROB = -1.0
MAX_COMPRESSION_RATIO = 2.4


@dataclass(frozen=True)
class Transcript:
    """The result of one utterance.

    Attributes:
        text: the recognised text; empty when the audio held no speech.
        audio_secs: length of the audio that was transcribed.
        run_secs: wall time spent decoding it (0 when skipped).
        skipped: why no decoding was attempted or its result was dropped, if so.
    """

    text: str
    audio_secs: float
    run_secs: float
    skipped: str | None = None


class WhisperEngine:
    """One faster-whisper model shared by all calls.

    Args:
        model: a model directory or name accepted by faster-whisper (see
            :func:`voxline.models.resolve_whisper`).
        device: ``cpu`` or ``cuda``.
        compute_type: CTranslate2 compute type (``int8`` on CPU, ``float16`` on GPU).
        cpu_threads: threads per decode; on a 2-core CPU 1 thread with 2 workers is
            faster than 2 threads (FACTS.md).
        num_workers: concurrent decodes; also the size of the engine's thread pool.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        num_workers: int = 2,
    ):
        from faster_whisper import WhisperModel

        self.model_name = model
        self._model = WhisperModel(
            model,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        self._executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="whisper")

    async def transcribe(
        self, audio: np.ndarray, *, language: str | None = "en", beam_size: int = 1
    ) -> Transcript:
        """Transcribe one utterance of 16 kHz mono float32 audio in [-1, 1].

        Silence, noise-only audio and clips shorter than 0.1 s give an empty
        transcript instead of a Whisper hallucination.

        Raises:
            ValueError: the audio is not a 1-D array of finite float samples.
        """
        samples = validate_audio(audio)
        audio_secs = samples.size / SAMPLE_RATE
        if audio_secs < MIN_SPEECH_SECS:
            return Transcript("", audio_secs, 0.0, skipped="too short")
        if float(np.sqrt(np.mean(samples**2))) < SILENCE_RMS:
            return Transcript("", audio_secs, 0.0, skipped="silence")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        text = await loop.run_in_executor(
            self._executor, self._decode, samples, language, beam_size
        )
        run_secs = time.perf_counter() - started
        return Transcript(text, audio_secs, run_secs, skipped=None if text else "no speech")

    def _decode(self, samples: np.ndarray, language: str | None, beam_size: int) -> str:
        segments, _ = self._model.transcribe(
            samples,
            language=language,
            beam_size=beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        kept = []
        for segment in segments:
            if segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < MIN_AVG_LOGPROB:
                continue
            if segment.compression_ratio > MAX_COMPRESSION_RATIO:
                continue
            kept.append(segment.text.strip())
        return " ".join(part for part in kept if part)

    def warm_up(self) -> None:
        """Decode one second of quiet noise so the first caller does not pay for lazy init."""
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        self._decode(noise, None if self._model.model.is_multilingual else "en", 1)

    def close(self) -> None:
        """Release the worker threads; pending decodes finish first."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def validate_audio(audio: np.ndarray) -> np.ndarray:
    """Check an utterance and return it as contiguous float32.

    Raises:
        ValueError: for a non-array, a multi-dimensional array, a non-float dtype
            or non-finite samples.
    """
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if samples.size and not math.isfinite(float(np.sum(samples))):
        raise ValueError("audio contains NaN or infinite samples")
    return samples
