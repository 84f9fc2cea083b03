"""An LLM server's chunk stream as pipecat can read it, bounded in time.

Servers differ in how they stream tool calls, and pipecat reads the OpenAI way:

* llama.cpp's server repeats a tool call's function name in every streamed delta
  (OpenAI sends it once), which pipecat joined into ``end_callend_call…``;
* a model may stream arguments that are not a JSON object (broken JSON, or vLLM's
  hermes parser giving ``"12345"``), which pipecat drops silently, leaving the
  caller in silence. They reach the tool handler marked as invalid instead, so the
  LLM hears an error and can apologise.

:class:`ToolCallStream` names each call once and gives its arguments whole and
valid, and raises :class:`LLMTimeoutError` when the first token or the last misses
its :class:`Deadlines`. No pipecat imports: it wraps the ``openai`` client's stream.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import (
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

INVALID_ARGUMENTS = "_voxline_invalid_arguments"
"""Key under which arguments that were not a JSON object reach the tool handler."""


def repair_arguments(raw: str) -> str:
    """A JSON object for any streamed arguments: as is, ``{}``, or marked invalid."""
    if not raw.strip():
        return "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return json.dumps({INVALID_ARGUMENTS: f"not valid JSON: {raw[:200]}"})
    if not isinstance(value, dict):
        return json.dumps({INVALID_ARGUMENTS: f"not a JSON object: {raw[:200]}"})
    return raw


class EmptyCompletionError(RuntimeError):
    """The server accepted the request and streamed nothing at all."""


class LLMTimeoutError(RuntimeError):
    """The server sent no first token, or did not finish its reply, in time.

    Not a ``TimeoutError``: pipecat reports those as a bare "LLM completion
    timeout"; this one keeps its message (which limit, how long) for the call trace.
    """


DEFAULT_FIRST_TOKEN_TIMEOUT_SECS = 15.0
DEFAULT_TOTAL_TIMEOUT_SECS = 30.0


@dataclass(frozen=True)
class Deadlines:
    """When one completion must have streamed its first token and its last, in
    event-loop time (``loop.time()``), and the limits they came from, for messages."""

    first_token_at: float
    finish_at: float
    first_token_secs: float
    total_secs: float

    @classmethod
    def starting_now(cls, first_token_secs: float, total_secs: float) -> Deadlines:
        """Deadlines for a completion asked for now."""
        now = asyncio.get_running_loop().time()
        return cls(now + first_token_secs, now + total_secs, first_token_secs, total_secs)

    def next(self, first_token_seen: bool) -> tuple[float, str]:
        """The deadline that applies now, and what missing it means."""
        if first_token_seen or self.finish_at <= self.first_token_at:
            return self.finish_at, (
                f"the LLM server's reply did not finish within {self.total_secs:g} s"
            )
        return self.first_token_at, (
            f"the LLM server sent no first token within {self.first_token_secs:g} s"
        )


class ToolCallStream:
    """Wraps a chunk stream: each tool call named once, its arguments given whole and valid.

    Args:
        stream: the server's chunk stream.
        on_close: called once when the stream is closed (releases the backend slot).
        deadlines: when the first token and the last must have arrived; missing
            one raises :class:`LLMTimeoutError` from the iteration.
    """

    def __init__(
        self,
        stream,
        on_close: Callable[[], Awaitable[None]] | None = None,
        *,
        deadlines: Deadlines | None = None,
    ):
        self._stream = stream
        self._on_close = on_close
        self._deadlines = deadlines
        self._first_token_seen = False
        self._iterator: AsyncIterator[ChatCompletionChunk] | None = None
        self._named: set[int] = set()
        self._arguments: dict[int, str] = {}
        self._open_index: int | None = None
        self._ready: deque[ChatCompletionChunk] = deque()
        self._template: ChatCompletionChunk | None = None
        self._finished = False

    def __aiter__(self) -> ToolCallStream:
        self._iterator = self._stream.__aiter__()
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        assert self._iterator is not None
        while not self._ready:
            if self._finished:
                raise StopAsyncIteration
            try:
                chunk = await self._next_chunk()
            except StopAsyncIteration:
                if self._template is None:
                    # llama.cpp answers 200 and sends nothing when it fails to render
                    # the prompt: silence the caller would otherwise get.
                    raise EmptyCompletionError(
                        "the LLM server ended the stream without a single chunk"
                    ) from None
                self._finished = True
                self._flush_arguments()
                continue
            self._take(chunk)
        return self._ready.popleft()

    async def _next_chunk(self) -> ChatCompletionChunk:
        """The server's next chunk, or :class:`LLMTimeoutError` once a deadline passes."""
        assert self._iterator is not None
        if self._deadlines is None:
            return await self._iterator.__anext__()
        deadline, missed = self._deadlines.next(self._first_token_seen)
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await self._iterator.__anext__()
        except TimeoutError:
            if timeout.expired():
                raise LLMTimeoutError(missed) from None
            raise

    def _take(self, chunk: ChatCompletionChunk) -> None:
        self._template = self._template or chunk
        for choice in chunk.choices:
            if choice.delta is not None and (choice.delta.content or choice.delta.tool_calls):
                self._first_token_seen = True
            for call in choice.delta.tool_calls or []:
                if self._open_index is not None and call.index != self._open_index:
                    self._flush_arguments()
                self._open_index = call.index
                if call.function is None:
                    continue
                if call.function.name:
                    if call.index in self._named:
                        call.function.name = None
                    else:
                        self._named.add(call.index)
                if call.function.arguments:
                    self._arguments[call.index] = (
                        self._arguments.get(call.index, "") + call.function.arguments
                    )
                    call.function.arguments = None
        self._ready.append(chunk)

    def _flush_arguments(self) -> None:
        """Emit the open tool call's whole arguments, repaired, as one delta."""
        index, self._open_index = self._open_index, None
        if index is None or self._template is None:
            return
        arguments = repair_arguments(self._arguments.pop(index, ""))
        call = ChoiceDeltaToolCall(
            index=index, function=ChoiceDeltaToolCallFunction(arguments=arguments)
        )
        self._ready.append(
            ChatCompletionChunk(
                id=self._template.id,
                created=self._template.created,
                model=self._template.model,
                object="chat.completion.chunk",
                choices=[Choice(index=0, delta=ChoiceDelta(tool_calls=[call]))],
            )
        )

    async def aclose(self) -> None:
        """Close the underlying iterator (pipecat closes it on cancellation)."""
        if self._iterator is not None and hasattr(self._iterator, "aclose"):
            await self._iterator.aclose()

    async def close(self) -> None:
        """Release the HTTP stream, which stops the server generating, and the slot."""
        try:
            if hasattr(self._stream, "close"):
                await self._stream.close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                await on_close()
