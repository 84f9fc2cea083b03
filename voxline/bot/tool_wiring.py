"""Give a call's LLM the persona's tools, through pipecat's function calling."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter
from pipecat.frames.frames import FunctionCallResultProperties
from pipecat.processors.aggregators.llm_context import LLMContext, LLMContextMessage
from pipecat.services.llm_service import FunctionCallParams, LLMService

from voxline import logcontent
from voxline.personas import Persona
from voxline.processors.frames import spoken_line
from voxline.processors.llm import VoxlineLLMService
from voxline.processors.tool_call_stream import INVALID_ARGUMENTS
from voxline.tools.builtins import (
    BUILTINS,
    CallControl,
    EndCallArguments,
    ToolArgumentError,
    TransferCallArguments,
    parse_arguments,
    perform,
)
from voxline.tools.runner import ToolRunner


def persona_tool_schemas(persona: Persona) -> ToolsSchema | None:
    """The persona's tools as pipecat describes them to the LLM, in the persona's order."""
    if not persona.tools:
        return None
    specs = persona.tool_specs
    schemas = []
    for name in persona.tools:
        if name in BUILTINS:
            description, parameters = BUILTINS[name].description, BUILTINS[name].parameters()
        else:
            spec = specs[name][0]
            description, parameters = spec.description, spec.parameters
        schemas.append(
            FunctionSchema(
                name=name,
                description=description,
                properties=parameters.get("properties", {}),
                required=parameters.get("required", []),
            )
        )
    return ToolsSchema(standard_tools=schemas)


def openai_tools(persona: Persona) -> list[dict[str, Any]]:
    """The ``tools`` list every request of the persona sends, exactly as pipecat sends it."""
    schemas = persona_tool_schemas(persona)
    if schemas is None:
        return []
    return [dict(tool) for tool in OpenAILLMAdapter().to_provider_tools_format(schemas)]


@dataclass(frozen=True)
class PersonaPrefix:
    """What every request of a persona starts with, and a digest that changes with it."""

    system_prompt: str
    tools: list[dict[str, Any]]
    digest: str


def persona_prefix(persona: Persona) -> PersonaPrefix:
    """The persona's frozen request prefix: its system prompt and its tools."""
    tools = openai_tools(persona)
    rendered = json.dumps([persona.system_prompt, tools], sort_keys=True)
    digest = hashlib.sha256(rendered.encode()).hexdigest()
    return PersonaPrefix(persona.system_prompt, tools, digest)


def persona_system_instruction(persona: Persona) -> str:
    """The LLM service's ``system_instruction`` for the persona's calls: its prompt,
    the same text :func:`persona_prefix` warms on the server."""
    return persona.system_prompt


def call_facts(persona: Persona, facts: dict[str, str]) -> str:
    """The per-call instructions that follow the persona's cached prefix."""
    lines = [f"{key}: {value}" for key, value in facts.items() if value]
    return "Facts about this call:\n" + "\n".join(lines)


FACTS_ROLE = "developer"
"""The role of the call's facts in the context.

pipecat deprecates a ``"system"`` message at the head of a context (the prompt
belongs in the LLM service's ``system_instruction``); a ``"developer"`` message is
its form for supplementary instructions. :class:`~voxline.processors.llm.VoxlineLLMService`
sends it as the ``"system"`` message it always was, right after the persona's prompt.
"""


def persona_context(persona: Persona, facts: dict[str, str] | None = None) -> LLMContext:
    """A new conversation: this call's facts, then (as the call goes on) its turns.

    The persona's prompt is not in the context: it is the LLM service's
    ``system_instruction`` (:func:`persona_system_instruction`), which pipecat sends
    as the first message of every request. That message and the tools are
    byte-identical for every call of the persona, so the LLM server's prefix cache
    serves them; what differs per call (caller number, time, call id) comes after
    them, as a second system message.
    """
    messages: list[LLMContextMessage] = []
    if facts:
        messages.append({"role": FACTS_ROLE, "content": call_facts(persona, facts)})
    schemas = persona_tool_schemas(persona)
    if schemas is None:
        return LLMContext(messages=messages)
    choice = persona.llm.tool_choice
    tool_choice = (
        choice
        if choice in ("auto", "none", "required")
        else {"type": "function", "function": {"name": choice}}
    )
    return LLMContext(messages=messages, tools=schemas, tool_choice=tool_choice)


async def run_with_filler(
    work: Awaitable[dict[str, Any]],
    persona: Persona,
    speak: Callable[[str], Awaitable[None]],
    *,
    still_waiting: Callable[[], bool] | None = None,
    later: Callable[[Coroutine[Any, Any, None]], object] | None = None,
) -> dict[str, Any]:
    """Await a tool; say the filler line once the caller has waited ``filler_after_ms``
    since it started.

    The caller's wait is the tool's run and then, after a quick tool, the follow-up
    completion's wait for its first words (a server busy with other calls can take
    seconds). Given ``still_waiting`` (whether nothing was said and the caller has not
    spoken since the tool started) and ``later`` (runs a coroutine in the background),
    the filler is said at the deadline after the tool returned, unless the reply began
    first. Without them, only a slow tool gets the filler.
    """
    after = persona.filler_after_ms / 1000
    loop = asyncio.get_running_loop()
    deadline = loop.time() + after
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=after)
        if not done:
            if still_waiting is None or still_waiting():
                await speak(persona.phrases.filler)
            return await task
        result = task.result()
    finally:
        task.cancel()
    if still_waiting is not None and later is not None:

        async def unless_the_reply_began() -> None:
            await asyncio.sleep(deadline - loop.time())  # a deadline, not a sync
            if still_waiting():
                await speak(persona.phrases.filler)

        later(unless_the_reply_began())
    return result


def _detail(error: str) -> str:
    """What a tool's error says, for the log line, only when caller content may be logged."""
    return f": {error}" if logcontent.enabled() else ""


def _takes_no_arguments(builtin: str) -> bool:
    try:
        parse_arguments(builtin, {})
    except ToolArgumentError:
        return False
    return True


def register_tools(
    llm: LLMService,
    persona: Persona,
    control: CallControl,
    *,
    replaced: Mapping[str, ToolRunner] | None = None,
) -> None:
    """Run each listed tool when the LLM calls it.

    ``replaced`` runs some YAML tools with other runners (``voxline test``'s fixtures),
    so a test answers from a fixture instead of a production system.

    Built-in tools act on the call through ``control``; YAML tools run their
    Python or HTTP handler. Bad arguments, unknown tools, failing or slow
    handlers and refused actions go back to the LLM as error results, so it can
    apologise; the call goes on.
    """

    hang_ups: set[asyncio.Future] = set()
    runners = {
        name: ToolRunner(spec, base_dir) for name, (spec, base_dir) in persona.tool_specs.items()
    }
    runners.update(replaced or {})

    async def handler(params: FunctionCallParams) -> None:
        async def answer(result: dict, speak_again: bool) -> None:
            properties = FunctionCallResultProperties(run_llm=speak_again)
            await params.result_callback(result, properties=properties)

        name, raw = params.function_name, params.arguments
        if isinstance(raw, dict) and INVALID_ARGUMENTS in raw:
            detail = _detail(raw[INVALID_ARGUMENTS])
            logger.warning(f"tool {name}: the LLM's arguments are not a JSON object{detail}")
            if name in runners or name not in persona.tools or not _takes_no_arguments(name):
                error = f"invalid arguments for {name}: {raw[INVALID_ARGUMENTS]}"
                await answer({"error": error}, True)
                return
            # A built-in that takes none (end_call): the call is what the LLM meant. An
            # error instead had the LLM read it aloud to a caller who had said goodbye.
            raw = {}
        if name in runners:

            async def speak(text: str) -> None:
                await params.llm.push_frame(
                    spoken_line(text, interruptible="filler" not in persona.turn.uninterruptible)
                )

            llm, waiting, later = params.llm, None, None
            if isinstance(llm, VoxlineLLMService):
                mark, later = llm.activity, llm.run_beside
                waiting = lambda: llm.activity == mark  # noqa: E731
            # The runner logs a failure itself (its kind, not the caller's values).
            result = await run_with_filler(
                runners[name].run(raw), persona, speak, still_waiting=waiting, later=later
            )
            await answer(result, True)
            return
        if name not in persona.tools:
            known = ", ".join(persona.tools)
            logger.warning(f"LLM called unknown tool {name!r}")
            await answer({"error": f"there is no tool {name!r}; the tools are {known}"}, True)
            return
        try:
            arguments = parse_arguments(name, raw)
        except ToolArgumentError as exc:
            logger.warning(f"tool {name}: invalid arguments (ToolArgumentError){_detail(str(exc))}")
            await answer({"error": str(exc)}, True)
            return
        if isinstance(arguments, EndCallArguments):
            # Nothing more to say after goodbye: record the result, then hang up.
            # Shielded so that a barge-in during the goodbye cannot cancel the hang-up.
            await answer({"status": "ending the call"}, False)
            hang_up = asyncio.ensure_future(
                perform(arguments, control, goodbye=persona.phrases.goodbye)
            )
            hang_ups.add(hang_up)
            hang_up.add_done_callback(hang_ups.discard)
            await asyncio.shield(hang_up)
            return
        if isinstance(arguments, TransferCallArguments):
            await params.llm.push_frame(
                spoken_line(
                    persona.phrases.transfer,
                    interruptible="transfer" not in persona.turn.uninterruptible,
                )
            )
        result = await perform(arguments, control, goodbye=persona.phrases.goodbye)
        if "error" in result:
            logger.warning(f"tool {name} failed: RuntimeError{_detail(result['error'])}")
        await answer(result, "error" in result)

    for name in persona.tools:
        # Synchronous tools (cancelled by a barge-in): asynchronous ones would make
        # pipecat add a note to the system prompt and break its cached prefix.
        llm.register_function(name, handler)
    # Names the LLM invents reach the same handler, which answers with an error.
    llm.register_function(None, handler)


def call_prefix(persona: Persona, context: LLMContext) -> LLMContext:
    """What every LLM request of a new call starts with after the persona's prompt:
    its context (the call's facts), then the greeting.

    Warmed on the LLM server as the call starts (``VoxlineLLMService``, which puts
    its ``system_instruction`` first as in every request), so that the call's
    facts, which follow the persona's cached prefix, are computed while the
    greeting plays.
    """
    messages: list[LLMContextMessage] = list(context.get_messages())
    if persona.greeting:
        messages.append({"role": "assistant", "content": persona.greeting})
    return LLMContext(messages=messages, tools=context.tools)
