"""Orpheus TTS: tokens streamed from vLLM, decoded by the shared SNAC engine as they come.

Each chunk of text becomes one ``/v1/completions`` stream. Audio starts once the
first 28 codes (4 frames, ~340 ms of speech) exist and then follows the tokens
frame by frame (85 ms each); it is resampled from 24 kHz to the call's rate. A
barge-in cancels the generator, which closes the HTTP stream, so the server stops
generating. A failing server or a stream without speech is logged and reported
as an error frame; the turn ends and the call goes on.

A persona's fixed lines (greeting, phrases) are kept in the voice's
:class:`~voxline.engines.lines.LineMemory` the first time a call speaks one whole,
and played from memory after that: no request to the server.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import numpy as np
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from voxline import logcontent
from voxline.engines.http_clients import async_client
from voxline.engines.lines import LineMemory
from voxline.engines.orpheus import (
    CODES_PER_FRAME,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    WINDOW_CODES,
    OrpheusError,
    OrpheusFrames,
    OrpheusSampling,
    stream_orpheus_tokens,
)
from voxline.engines.snac import SNACDecoder
from voxline.processors.resample import resample_utterance
from voxline.processors.speculation import SpeculativeTTSMixin
from voxline.processors.tts import STALL_SECS

MIN_TAKE_SAMPLES = WINDOW_CODES // CODES_PER_FRAME * SAMPLES_PER_FRAME
"""A line's audio shorter than one decoding window (a stream cut short) is not kept."""


class OrpheusTTSService(SpeculativeTTSMixin, TTSService):
    """Speaks text with Orpheus served by an OpenAI-compatible completions server.

    Args:
        decoder: the Runtime's shared SNAC decoder.
        base_url: the server root (no ``/v1``).
        model: the served model name.
        voice: an Orpheus voice (tara, leah, jess, leo, dan, mia, zac, zoe).
        sampling: temperature, top_p, repetition penalty, token limit.
        http_client: shared HTTP client (connection reuse across turns).
        lines: the voice's fixed lines, kept once spoken whole and replayed (None: every
            line is synthesized).
    """

    def __init__(
        self,
        *,
        decoder: SNACDecoder,
        base_url: str,
        model: str,
        voice: str,
        sampling: OrpheusSampling | None = None,
        http_client: httpx.AsyncClient | None = None,
        lines: LineMemory | None = None,
        **kwargs,
    ):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            stop_frame_timeout_s=kwargs.pop("stop_frame_timeout_s", STALL_SECS),
            settings=TTSSettings(model=model, voice=voice, language=None),
            **kwargs,
        )
        self._decoder = decoder
        self._base_url = base_url
        self._model = model
        self._voice = voice
        self._sampling = sampling or OrpheusSampling()
        self._lines = lines
        self._owns_client = http_client is None
        self._client = http_client or async_client(timeout=httpx.Timeout(30.0, connect=5.0))

    def can_generate_metrics(self) -> bool:
        """Time to first audio is reported as TTFB."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        """Stream ``text``'s audio frames as the tokens arrive."""
        try:
            await self.start_tts_usage_metrics(text)
            speech = (
                self._speech(text)
                if self._lines is None
                else self._lines.play(
                    text, lambda: self._speech(text), min_samples=MIN_TAKE_SAMPLES
                )
            )
            audio = resample_utterance(speech, SAMPLE_RATE, self.sample_rate)
            async for frame in self._stream_audio_frames_from_iterator(
                audio, in_sample_rate=self.sample_rate, context_id=context_id
            ):
                await self.stop_ttfb_metrics()
                yield frame
        except (OrpheusError, ValueError) as exc:
            logger.error(f"{self}: Orpheus failed for {logcontent.text(text)}: {exc}")
            yield ErrorFrame(error=f"Orpheus TTS failed: {exc}")
        finally:
            await self.stop_ttfb_metrics()

    async def _speech(self, text: str) -> AsyncIterator[np.ndarray]:
        """Float samples at 24 kHz, one frame (or the first two) at a time."""
        frames = OrpheusFrames()
        tokens = stream_orpheus_tokens(
            self._client,
            self._base_url,
            model=self._model,
            voice=self._voice,
            text=text,
            sampling=self._sampling,
        )
        try:
            async for number in tokens:
                for window in frames.push(number):
                    decoded = await self._decoder.decode(window.codes)
                    yield decoded[window.start : window.stop]
                if frames.ended:
                    break
        finally:
            await tokens.aclose()  # closes the HTTP stream: the server stops generating
        for window in frames.finish():
            yield (await self._decoder.decode(window.codes))[window.start : window.stop]
        if frames.rejected:
            logger.warning(f"{self}: dropped {frames.rejected} tokens outside the audio range")
        if not frames.codes:
            raise OrpheusError("the stream held no audio tokens")
        if len(frames.codes) < WINDOW_CODES:
            logger.warning(
                f"{self}: the stream ended after {len(frames.codes)} audio tokens (< "
                f"{WINDOW_CODES}); decoded what there was"
            )

    async def cleanup(self) -> None:
        """Release the HTTP connections."""
        await super().cleanup()
        if self._owns_client:
            await self._client.aclose()
