"""Give a call's LLM the persona's tools, through pipecat's function calling."""

from __future__ import annotations

import asyncio

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import FunctionCallResultProperties, TTSSpeakFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.llm_service import FunctionCallParams, LLMService

from voxline.personas import Persona
from voxline.tools.builtins import (
    BUILTINS,
    CallControl,
    EndCallArguments,
    ToolArgumentError,
    TransferCallArguments,
    parse_arguments,
    perform,
)


def persona_context(persona: Persona) -> LLMContext:
    """An empty conversation that offers the persona's tools to the LLM."""
    if not persona.tools:
        return LLMContext()
    schemas = [
        FunctionSchema(
            name=name,
            description=BUILTINS[name].description,
            properties=BUILTINS[name].parameters()["properties"],
            required=BUILTINS[name].parameters()["required"],
        )
        for name in persona.tools
    ]
    choice = persona.llm.tool_choice
    tool_choice = (
        choice
        if choice in ("auto", "none", "required")
        else {"type": "function", "function": {"name": choice}}
    )
    return LLMContext(tools=ToolsSchema(standard_tools=schemas), tool_choice=tool_choice)


def register_tools(llm: LLMService, persona: Persona, control: CallControl) -> None:
    """Run each listed tool against the call's controls when the LLM calls it.

    Bad arguments and refused actions go back to the LLM as error results, so it
    can apologise; the call goes on.
    """

    hang_ups: set[asyncio.Future] = set()

    async def handler(params: FunctionCallParams) -> None:
        async def answer(result: dict, speak_again: bool) -> None:
            properties = FunctionCallResultProperties(run_llm=speak_again)
            await params.result_callback(result, properties=properties)

        try:
            arguments = parse_arguments(params.function_name, params.arguments)
        except ToolArgumentError as exc:
            logger.warning(f"tool {params.function_name}: {exc}")
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
            await params.llm.push_frame(TTSSpeakFrame(persona.phrases.transfer))
        result = await perform(arguments, control, goodbye=persona.phrases.goodbye)
        if "error" in result:
            logger.warning(f"tool {params.function_name}: {result['error']}")
        await answer(result, "error" in result)

    for name in persona.tools:
        # Synchronous tools (cancelled by a barge-in): asynchronous ones would make
        # pipecat add a note to the system prompt and break its cached prefix.
        llm.register_function(name, handler)
