"""Built-in tools any persona may list: ``end_call``, ``transfer_call``, ``send_dtmf``.

Their arguments are validated with pydantic before anything happens; a bad
argument or an action the transport cannot do becomes an error result the LLM
sees, never an exception that ends the call. What each tool does is up to the
call's transport, through the :class:`CallControl` it provides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CallControl(Protocol):
    """What a transport lets the built-in tools do to a live call."""

    async def end_call(self, goodbye: str = "") -> None:
        """Say ``goodbye`` (or the persona's), then hang up."""

    async def transfer_call(self, number: str) -> None:
        """Hand the call to ``number``."""

    async def send_dtmf(self, digits: str) -> None:
        """Press keypad keys on the line."""


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EndCallArguments(_Arguments):
    """No arguments: a free-text reason only gives a small model room to ramble."""


class TransferCallArguments(_Arguments):
    number: str = Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164, e.g. +15551234567")


class SendDTMFArguments(_Arguments):
    digits: str = Field(pattern=r"^[0-9*#]{1,32}$")


class Builtin(BaseModel):
    """One built-in tool: what the LLM is told, and how its arguments are checked."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str
    arguments: type[_Arguments]

    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of the arguments, as the LLM sees it."""
        schema = self.arguments.model_json_schema()
        return {
            "type": "object",
            "properties": {
                name: {k: v for k, v in prop.items() if k != "title"}
                for name, prop in schema.get("properties", {}).items()
            },
            "required": schema.get("required", []),
        }


BUILTINS: dict[str, Builtin] = {
    tool.name: tool
    for tool in (
        Builtin(
            name="end_call",
            description="Say goodbye and end the phone call. Use when the caller is done.",
            arguments=EndCallArguments,
        ),
        Builtin(
            name="transfer_call",
            description="Transfer the caller to a human at a phone number.",
            arguments=TransferCallArguments,
        ),
        Builtin(
            name="send_dtmf",
            description="Press keypad keys on the line (digits, * and #).",
            arguments=SendDTMFArguments,
        ),
    )
}


def unknown_tools(names: list[str]) -> list[str]:
    """The names in ``names`` that are not built-in tools."""
    return [name for name in names if name not in BUILTINS]


class ToolArgumentError(ValueError):
    """The LLM called a tool with arguments that do not match its schema."""


def parse_arguments(name: str, arguments: Mapping[str, Any]) -> _Arguments:
    """Check a tool call's arguments against the tool's schema.

    Raises:
        ToolArgumentError: an unknown tool, or the first argument that is wrong.
    """
    tool = BUILTINS.get(name)
    if tool is None:
        raise ToolArgumentError(f"unknown tool {name!r}")
    try:
        return tool.arguments.model_validate(dict(arguments))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "arguments"
        raise ToolArgumentError(f"invalid arguments: {where}: {first['msg']}") from None


async def perform(arguments: _Arguments, control: CallControl, *, goodbye: str) -> dict[str, Any]:
    """Carry out a validated tool call on the live call.

    Returns:
        ``{"status": ...}`` on success, ``{"error": ...}`` when the transport refused.
    """
    try:
        if isinstance(arguments, EndCallArguments):
            await control.end_call(goodbye)
            return {"status": "call ended"}
        if isinstance(arguments, TransferCallArguments):
            await control.transfer_call(arguments.number)
            return {"status": f"transferred to {arguments.number}"}
        assert isinstance(arguments, SendDTMFArguments)
        await control.send_dtmf(arguments.digits)
        return {"status": f"pressed {arguments.digits}"}
    except RuntimeError as exc:
        return {"error": str(exc)}
