"""The call's LLM service: pipecat's OpenAI-compatible service, tolerant of llama.cpp's stream.

llama.cpp's server repeats a tool call's function name in every streamed delta
(OpenAI sends it once), and pipecat joins the pieces, so ``end_call`` arrived
as ``end_callend_callend_call``. The stream is normalised here, for every
server, before pipecat reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from openai.types.chat import ChatCompletionChunk
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.openai.llm import OpenAILLMService


class NamedOnceStream:
    """Wraps a chunk stream so each tool call's name appears only in its first delta."""

    def __init__(self, stream):
        self._stream = stream
        self._iterator: AsyncIterator[ChatCompletionChunk] | None = None
        self._named: set[int] = set()

    def __aiter__(self) -> NamedOnceStream:
        self._iterator = self._stream.__aiter__()
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        assert self._iterator is not None
        chunk = await self._iterator.__anext__()
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function is None or not call.function.name:
                    continue
                if call.index in self._named:
                    call.function.name = None
                else:
                    self._named.add(call.index)
        return chunk

    async def aclose(self) -> None:
        """Close the underlying iterator (pipecat closes it on cancellation)."""
        if self._iterator is not None and hasattr(self._iterator, "aclose"):
            await self._iterator.aclose()

    async def close(self) -> None:
        """Release the HTTP stream."""
        if hasattr(self._stream, "close"):
            await self._stream.close()


class VoxlineLLMService(OpenAILLMService):
    """pipecat's OpenAI-compatible LLM service with the stream normalised."""

    async def get_chat_completions(self, context: LLMContext):
        """Stream completions; each tool call's name is given once."""
        return NamedOnceStream(await super().get_chat_completions(context))
