"""The call's LLM service: pipecat's OpenAI-compatible service behind voxline's backend.

Every request first takes a slot from the shared :class:`~voxline.engines.llm.LLMBackend`
(the per-server concurrency cap, with a bounded wait), and holds it until its
stream closes. The stream is normalised for every server before pipecat reads it
(:mod:`voxline.processors.tool_call_stream`: each tool call named once, its arguments
whole and a JSON object, or marked invalid so that the LLM hears an error).

Every completion is bounded in time: if the server has not streamed a first token
(text or a tool call) ``first_token_timeout_secs`` after the request was asked,
waiting for a backend slot included, or is still streaming ``total_timeout_secs``
after it, the stream is closed (which stops the server generating and frees the
slot) and :class:`LLMTimeoutError` is raised. pipecat turns it into an
``ErrorFrame``; the session answers that with the persona's apology, and the
call goes on. A server that accepts requests and never answers them would
otherwise hold the caller in silence for as long as the HTTP client waits.

A completion that answers a caller's turn that is not yet committed (a
speculation, docs/architecture.md) streams like any other: the audio gate after
TTS holds its reply. Its tool calls wait for the commit, and run then, without
a second completion; a withdrawn speculation is cancelled with its stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    FunctionCallFromLLM,
    InterruptionFrame,
    LLMContextFrame,
    LLMTextFrame,
    StartFrame,
    TTSSpeakFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.llm import OpenAILLMService

from voxline.engines.llm import LLMBackend
from voxline.processors.frames import CallerWordsSoFarFrame, ReplySpeculationFrame
from voxline.processors.speculation import SpeculationTracker
from voxline.processors.tool_call_stream import (
    DEFAULT_FIRST_TOKEN_TIMEOUT_SECS,
    DEFAULT_TOTAL_TIMEOUT_SECS,
    Deadlines,
    LLMTimeoutError,
    ToolCallStream,
)


class VoxlineLLMService(OpenAILLMService):
    """pipecat's OpenAI-compatible LLM service, capped by the backend, stream normalised.

    Args:
        backend: the shared server this call's requests go to (its concurrency cap).
        warm_context: what every request of this call will start with after the
            ``system_instruction`` (the persona's prompt): the call's facts and the
            greeting. Sent, after the ``system_instruction``, as a one-token
            request when the call starts, so that the server has computed it
            before the caller's first words (with the embedded llama.cpp server,
            facts after the cached persona prefix otherwise cost about 0.4 s).
        context: the call's conversation (the one its aggregators keep), with which
            :meth:`prefill` sends the caller's words so far; None: no prefill.
        first_token_timeout_secs: a completion with no first token this long after it
            was asked (slot wait included) fails with :class:`LLMTimeoutError`.
        total_timeout_secs: a completion still streaming this long after it was
            asked fails the same way; it also bounds the call's prompt warm-up.
        tool_call_max_tokens: the least ``max_tokens`` of a completion forced to call
            a tool (the persona's ``llm.tool_call_max_tokens``).
        **kwargs: passed to pipecat's ``OpenAILLMService``.
    """

    supports_developer_role = True
    """The facts' ``"developer"`` message reaches :meth:`build_chat_completion_params`
    as such (not as a caller's ``"user"`` line), which sends it as ``"system"``."""

    def __init__(
        self,
        *,
        backend: LLMBackend | None = None,
        warm_context: LLMContext | None = None,
        context: LLMContext | None = None,
        first_token_timeout_secs: float = DEFAULT_FIRST_TOKEN_TIMEOUT_SECS,
        total_timeout_secs: float = DEFAULT_TOTAL_TIMEOUT_SECS,
        tool_call_max_tokens: int = 128,
        **kwargs: Any,
    ):
        self._backend = backend  # before pipecat's __init__, which calls create_client
        super().__init__(**kwargs)
        self._tool_call_max_tokens = tool_call_max_tokens
        self._first_token_timeout_secs = first_token_timeout_secs
        self._total_timeout_secs = total_timeout_secs
        self._warm_context = warm_context
        self._warm_task: asyncio.Task | None = None
        self._context = context
        self._prefill_task: asyncio.Task | None = None
        self._speculation_gate = SpeculationTracker(name=f"{self}::SpeculationTracker")
        self._turn_settled = asyncio.Event()
        self._turn_settled.set()
        self._activity = 0
        self._background: set[asyncio.Task] = set()

    def create_client(self, api_key=None, base_url=None, **kwargs):
        """The backend's client, shared by every call on its server.

        pipecat makes an ``AsyncOpenAI`` client per service, that is per call: 19.8 ms of
        the event loop each in ``benchmarks/http_clients.py`` (its TLS context, see
        :mod:`voxline.engines.http_clients`) and a pool of connections that is never
        closed. One client per server has neither cost; the Runtime closes it.
        """
        if self._backend is not None:
            return self._backend.client
        return super().create_client(api_key=api_key, base_url=base_url, **kwargs)

    @property
    def activity(self) -> int:
        """Counts what ends a caller's wait in silence: reply text or a spoken line pushed,
        the caller speaking. Unchanged since a mark: the caller is still waiting."""
        return self._activity

    def run_beside(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` beside the call (a tool's filler timer); it is cancelled
        when the pipeline ends, so a hang-up leaves nothing running."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning(f"{self}: {type(error).__name__} beside the call: {error}")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Announce whether each completion answers an open turn, ahead of its frames."""
        if isinstance(frame, (VADUserStartedSpeakingFrame, InterruptionFrame)):
            self._activity += 1
        if isinstance(frame, CallerWordsSoFarFrame):
            self.prefill(frame.text)
            return  # for the server alone
        if isinstance(frame, StartFrame) and self._warm_context is not None:
            self._warm_task = self.create_task(self._warm_up(self._warm_context))
            self._warm_context = None
        if isinstance(frame, LLMContextFrame):
            self._speculation_gate.begin_speculation(frame.speculation)
            speculative = self._speculation_gate.is_speculating
            if speculative:
                self._turn_settled.clear()
            await self.push_frame(ReplySpeculationFrame(speculative=speculative))
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Push as pipecat does; note when the turn a speculation answers is settled."""
        if direction == FrameDirection.DOWNSTREAM and isinstance(
            frame, (LLMTextFrame, TTSSpeakFrame)
        ):
            self._activity += 1
        await super().push_frame(frame, direction)
        if not self._speculation_gate.is_speculating:
            self._turn_settled.set()

    async def run_function_calls(self, function_calls: Sequence[FunctionCallFromLLM]):
        """A speculative completion's tool calls wait for the commit, then run once.

        pipecat withdraws the whole speculation instead and asks the LLM again after
        the commit; waiting keeps the completion (the turn's transcript is the same)
        and still runs no tool before the caller has finished. A withdrawn
        speculation cancels this wait with the completion.
        """
        while self._speculation_gate.is_speculating:
            self._turn_settled.clear()
            await self._turn_settled.wait()
        await super().run_function_calls(function_calls)

    def build_chat_completion_params(self, params_from_context) -> dict:
        """The request as every server voxline talks to reads it.

        * ``"developer"`` messages (the call's facts, see
          :data:`~voxline.bot.tool_wiring.FACTS_ROLE`) are sent as ``"system"``
          messages: llama.cpp's server refuses the role and chat templates know
          only ``system``. So a request starts, byte for byte as it always has,
          with the persona's prompt (the ``system_instruction``) and then the facts.
        * A tool choice that names a tool forces it in answers to the caller only:
          the completion that follows its result speaks (``none``). With ``auto``
          there, the forced call repeated itself: SmolLM2 called the same tool again
          with the same arguments, and the handler ran twice in one turn.
        * A completion forced to call a tool gets at least ``tool_call_max_tokens``,
          whatever the persona's ``max_tokens``.
        """
        params = super().build_chat_completion_params(params_from_context)
        messages = [
            # New dicts: the adapter's may be the context's own (LLM-specific messages).
            {**message, "role": "system"}
            if isinstance(message, dict) and message.get("role") == "developer"
            else message
            for message in params.get("messages") or []
        ]
        for index, message in enumerate(messages):
            # Chat templates (llama.cpp's jinja ones) read every message's content;
            # an assistant message that only calls tools has none.
            if isinstance(message, dict) and message.get("content") is None:
                messages[index] = {**message, "content": ""}
        if "messages" in params:
            params["messages"] = messages
        choice = params.get("tool_choice")
        if isinstance(choice, dict) and messages and messages[-1].get("role") == "tool":
            params["tool_choice"] = choice = "none"
        if isinstance(choice, dict) or choice == "required":
            # The answer is a tool call, not speech: the persona's max_tokens bounds what
            # the caller hears, and would cut the call's arguments mid-JSON (48 tokens
            # hold vLLM's envelope and half of get_balance's arguments).
            for key in ("max_tokens", "max_completion_tokens"):
                limit = params.get(key)
                if isinstance(limit, int) and limit < self._tool_call_max_tokens:
                    params[key] = self._tool_call_max_tokens
        return params

    async def chat_request(self, context: LLMContext) -> dict:
        """The chat-completion arguments a completion of ``context`` sends.

        Built as pipecat's ``get_chat_completions`` builds them: the service's
        ``system_instruction`` first, then the context's messages and tools.
        """
        instruction = self._settings.system_instruction
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=instruction if isinstance(instruction, str) else None,
            convert_developer_to_user=not self.supports_developer_role,
        )
        return self.build_chat_completion_params(params)

    async def _warm_up(self, context: LLMContext, *, what: str = "call's prompt") -> None:
        """Compute ``context`` on the server; a failure only costs latency."""
        if self._backend is None:
            return
        request = await self.chat_request(context)
        try:
            # A server that never answers must not hold a slot for the whole call.
            async with asyncio.timeout(self._total_timeout_secs):
                seconds = await self._backend.warm(**request)
        except Exception as exc:  # the first turn computes it instead
            logger.warning(f"{self}: warming the {what} failed: {exc!r}")
        else:
            logger.debug(f"{self}: {what} warmed in {seconds:.2f} s")

    def prefill(self, words: str) -> None:
        """Have the server compute the conversation with the caller's ``words`` so far
        (:mod:`~voxline.processors.turn_prefill`), if it has nothing else to do: the
        request at the pause then finds all but the last words cached."""
        backend, context = self._backend, self._context
        if backend is None or context is None or not backend.idle:
            return
        if self._prefill_task is not None and not self._prefill_task.done():
            return
        messages = [*context.get_messages(), {"role": "user", "content": words}]
        ahead = LLMContext(messages=messages, tools=context.tools)
        self._prefill_task = self.create_task(self._warm_up(ahead, what="caller's words"))

    async def cleanup(self) -> None:
        """Stop a warm-up and what runs beside the call with the pipeline."""
        for task in (self._warm_task, self._prefill_task):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._warm_task = self._prefill_task = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().cleanup()

    async def get_chat_completions(self, context: LLMContext):
        """Take a backend slot, then stream; the slot is released when the stream closes.

        The first-token deadline covers the slot wait and the server's response
        headers too: a server that accepts the request and never answers fails here.

        Raises:
            LLMTimeoutError: no slot and no response within the first-token deadline.
        """
        deadlines = Deadlines.starting_now(self._first_token_timeout_secs, self._total_timeout_secs)
        slot = self._backend.slot() if self._backend is not None else None
        held = False
        deadline, missed = deadlines.next(first_token_seen=False)
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                if slot is not None:
                    await slot.__aenter__()
                    held = True
                stream = await super().get_chat_completions(context)
        except BaseException as exc:
            if held and slot is not None:
                await slot.__aexit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, TimeoutError) and timeout.expired():
                raise LLMTimeoutError(missed) from None
            raise

        release = None
        if slot is not None:

            async def release() -> None:
                await slot.__aexit__(None, None, None)

        return ToolCallStream(stream, on_close=release, deadlines=deadlines)
