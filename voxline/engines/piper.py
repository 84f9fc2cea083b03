"""The shared Piper voice engine (the embedded default TTS).

A Piper voice is loaded once per process and shared by all calls. Piper
synthesises whole sentences (one chunk per sentence, no streaming inside one),
so the engine yields each sentence's audio as soon as it exists, from its own
worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class PiperEngine:
    """One loaded Piper voice shared by every call that uses it.

    Args:
        model: the voice's ``.onnx`` file.
        config: its ``.onnx.json`` file.
        use_cuda: run the ONNX model on a CUDA device.
        workers: concurrent syntheses (threads owned by this engine).
    """

    def __init__(self, model: Path, config: Path, *, use_cuda: bool = False, workers: int = 1):
        from piper import PiperVoice

        self.model_path = Path(model)
        self._voice = PiperVoice.load(model, config_path=config, use_cuda=use_cuda)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper")

    @property
    def sample_rate(self) -> int:
        """The voice's native sample rate (22 050 Hz for the packaged voice)."""
        return int(self._voice.config.sample_rate)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield 16-bit mono PCM at :attr:`sample_rate`, one piece per sentence.

        Closing the iterator early (an interruption) stops synthesis after the
        sentence in progress.
        """
        loop = asyncio.get_running_loop()
        chunks: Iterator = iter(self._voice.synthesize(text))
        try:
            while True:
                audio = await loop.run_in_executor(self._executor, _next_audio, chunks)
                if audio is None:
                    return
                yield audio
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def synthesize_all(self, text: str) -> bytes:
        """Synthesise ``text`` completely, blocking: for tools and tests, not calls."""
        return b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(text))

    def warm_up(self) -> None:
        """Synthesise a word so the first reply does not pay for ONNX session init."""
        self.synthesize_all("Hello.")

    def close(self) -> None:
        """Release the worker thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _next_audio(chunks: Iterator) -> bytes | None:
    chunk = next(chunks, None)
    return None if chunk is None else chunk.audio_int16_bytes
