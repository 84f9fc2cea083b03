"""TTS services backed by the process's shared voices."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator

import numpy as np
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from voxline import logcontent
from voxline.engines.lines import LineMemory
from voxline.engines.piper import Overloaded, PiperEngine
from voxline.processors.reply_clock import ReplyClock
from voxline.processors.resample import resample_utterance
from voxline.processors.speculation import SpeculativeTTSMixin

STALL_SECS = 15.0
"""How long a reply's audio may pause before pipecat ends its TTS context.

pipecat closes a context that has had no audio for ``stop_frame_timeout_s`` (3 s by
default), reports it as "completed with no audio" and, after three in a row, takes the
service out of use for the rest of the call. Its end is signalled explicitly once a
turn's text is synthesized, so the timeout only ever fires on a stall: a sentence
waiting behind other calls' work in a shared engine, or Orpheus's first 28 tokens on a
busy CPU. Such a stall is late audio, not lost audio; the engines have their own limits
(queue refusals, HTTP timeouts) for work that will never come.
"""


class SharedPiperTTSService(SpeculativeTTSMixin, TTSService):
    """Speaks text with the shared Piper voice, streaming each sentence as it is made.

    Text arrives already cut into speakable chunks by the chunker, so the first
    (short) clause is synthesised, and heard, while later ones are still being
    generated. Audio is resampled to the pipeline's output rate.

    A persona's fixed lines (greeting, phrases) are kept in the voice's
    :class:`~voxline.engines.lines.LineMemory` the first time a call speaks one whole
    and played from memory after that, without the engine.

    The engine is told which chunk is the first of its reply: the first
    ``run_tts`` of a turn context (pipecat opens one on ``LLMFullResponseStartFrame``
    and for each ``TTSSpeakFrame``, so a greeting counts). Its first sentence goes
    ahead of other calls' queued sentences in the shared engine. Every later chunk
    says when the reply's audio made so far will have played (counted from its first
    frame, so never later than the caller hears it), and the engine voices the chunk
    needed soonest first.

    Args:
        engine: the Runtime's Piper engine for this persona's voice.
        lines: the voice's fixed lines (None: every line is synthesized).
    """

    def __init__(self, *, engine: PiperEngine, lines: LineMemory | None = None, **kwargs):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            stop_frame_timeout_s=kwargs.pop("stop_frame_timeout_s", STALL_SECS),
            settings=TTSSettings(model=None, voice=str(engine.model_path.stem), language=None),
            **kwargs,
        )
        self._engine = engine
        self._lines = lines
        self._fresh_contexts: dict[str, None] = {}  # contexts with no chunk spoken yet
        self._clocks: dict[str, ReplyClock] = {}  # when a context's audio so far has played

    def can_generate_metrics(self) -> bool:
        """Time to first audio is reported as TTFB."""
        return True

    async def on_turn_context_created(self, context_id: str):
        """A reply or a spoken line begins: its first chunk gets the engine's priority."""
        await super().on_turn_context_created(context_id)
        self._fresh_contexts[context_id] = None
        while len(self._fresh_contexts) > 8:  # replies that never spoke a chunk
            del self._fresh_contexts[next(iter(self._fresh_contexts))]
        self._clocks.pop(context_id, None)
        while len(self._clocks) >= 8:  # only the reply being spoken matters
            del self._clocks[next(iter(self._clocks))]
        for clock in self._clocks.values():
            if clock.held:  # a reply held before this one was dropped or released
                clock.reset()
        self._clocks[context_id] = ReplyClock(time.monotonic, held=self._voxline_holding)

    def on_speculation_released(self) -> None:
        """The held reply's audio plays from now: its later chunks are needed from now."""
        for clock in self._clocks.values():
            clock.release()

    def _needed_at(self, context_id: str) -> float | None:
        """When the caller will have heard the audio made so far for ``context_id``.

        A held reply plays no sooner than the commit, which may come at any moment:
        its audio is counted from now."""
        clock = self._clocks.get(context_id)
        return None if clock is None else clock.ends_at

    def _is_first_chunk(self, context_id: str) -> bool:
        return self._fresh_contexts.pop(context_id, False) is None

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        """Synthesise ``text`` and yield its audio frames."""
        first = self._is_first_chunk(context_id)
        try:
            await self.start_tts_usage_metrics(text)

            needed_at = None if first else self._needed_at(context_id)

            def speak() -> AsyncIterator[np.ndarray]:
                pieces = self._engine.synthesize(
                    text, first=first, label=self.name, needed_at=needed_at
                )
                return _floats(pieces)

            speech = speak() if self._lines is None else self._lines.play(text, speak)
            audio = resample_utterance(speech, self._engine.sample_rate, self.sample_rate)
            async for frame in self._stream_audio_frames_from_iterator(
                audio, in_sample_rate=self.sample_rate, context_id=context_id
            ):
                await self.stop_ttfb_metrics()
                self._note_audio(context_id, frame)
                yield frame
        except Overloaded as exc:  # refused at once rather than heard late
            logger.warning(f"{self}: {exc}; dropped {logcontent.text(text)}")
            yield ErrorFrame(error=f"TTS overloaded: {exc}")
        except Exception as exc:  # a voice failure must not end the call
            logger.error(f"{self}: synthesis failed for {logcontent.text(text)}: {exc}")
            yield ErrorFrame(error=f"Piper synthesis failed: {exc}")
        finally:
            await self.stop_ttfb_metrics()

    def _note_audio(self, context_id: str, frame: Frame) -> None:
        if not isinstance(frame, TTSAudioRawFrame):
            return
        if (clock := self._clocks.get(context_id)) is None:  # unannounced or forgotten: not held
            clock = self._clocks[context_id] = ReplyClock(time.monotonic)
        clock.add(len(frame.audio) / 2 / frame.sample_rate)


async def _floats(pieces: AsyncIterator[bytes]) -> AsyncIterator[np.ndarray]:
    async for piece in pieces:
        yield np.frombuffer(piece, dtype=np.int16).astype(np.float32) / 32768
