"""Segmented STT backed by the process's shared Whisper engine.

pipecat's ``WhisperSTTService`` loads its own model for every call; this service
keeps pipecat's VAD-segmented behaviour (one transcript per utterance, in order,
off the audio path) and sends the audio to the one shared :class:`WhisperEngine`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TranscriptionFrame
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601

from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.engines.whisper import SAMPLE_RATE, WhisperEngine
from voxline.processors.frames import TranscriptionSkippedFrame


class SharedWhisperSTTService(SegmentedSTTService):
    """Transcribes each VAD-cut utterance with the shared Whisper engine.

    Args:
        engine: the Runtime's Whisper engine for this persona's STT model.
        language: the callers' language code (``en``), or None to detect it.
        beam_size: 1 is greedy decoding (fastest); more trades latency for accuracy.
        ttfs_p99_latency: p99 seconds from end of speech to transcript, which the
            turn logic waits at most for a transcript.
    """

    def __init__(
        self,
        *,
        engine: WhisperEngine,
        language: str | None = "en",
        beam_size: int = 1,
        ttfs_p99_latency: float = 0.8,
        **kwargs,
    ):
        super().__init__(
            settings=STTSettings(model=engine.model_name, language=language),
            # Measured here: tiny.en answers a short phone utterance in 0.3-0.7 s.
            ttfs_p99_latency=ttfs_p99_latency,
            **kwargs,
        )
        self._engine = engine
        self._language = language
        self._beam_size = beam_size

    def can_generate_metrics(self) -> bool:
        """Whisper timing is reported as processing metrics."""
        return True

    @property
    def wants_wav_segments(self) -> bool:
        """Whisper reads raw 16-bit PCM: no WAV header."""
        return False

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Transcribe one utterance of 16-bit mono PCM at the pipeline's input rate."""
        samples = np.frombuffer(audio, dtype=np.int16).astype(np.float32) / 32768.0
        if self.sample_rate != SAMPLE_RATE:
            samples = soxr.resample(samples, self.sample_rate, SAMPLE_RATE).astype(np.float32)
        await self.start_processing_metrics()
        try:
            result = await self._engine.transcribe(
                samples, language=self._language, beam_size=self._beam_size
            )
        except ValueError as exc:
            yield ErrorFrame(f"utterance rejected: {exc}")
            return
        except (Overloaded, BatcherClosed) as exc:
            yield ErrorFrame(f"speech recognition unavailable: {exc}")
            return
        finally:
            await self.stop_processing_metrics()
        if not result.text:
            logger.debug(f"{self}: no text ({result.skipped}, {result.audio_secs:.2f} s)")
            yield TranscriptionSkippedFrame(
                reason=result.skipped or "", audio_secs=result.audio_secs
            )
            return
        logger.debug(f"{self}: transcribed {result.audio_secs:.2f} s in {result.run_secs:.3f} s")
        language = (
            Language(self._language) if self._language in Language._value2member_map_ else None
        )
        yield TranscriptionFrame(
            result.text, self._user_id, time_now_iso8601(), language, finalized=True
        )
