"""Built-in tools: argument validation and what a non-phone transport allows."""

from __future__ import annotations

import pytest

from voxline.bot.call_control import PipelineCallControl
from voxline.tools.builtins import (
    BUILTINS,
    EndCallArguments,
    ToolArgumentError,
    TransferCallArguments,
    parse_arguments,
    perform,
)


def test_every_builtin_advertises_a_json_schema():
    transfer = BUILTINS["transfer_call"].parameters()
    assert transfer["required"] == ["number"]
    assert transfer["properties"]["number"]["type"] == "string"
    assert BUILTINS["end_call"].parameters()["required"] == []


def test_valid_arguments_parse():
    assert isinstance(parse_arguments("end_call", {}), EndCallArguments)
    parsed = parse_arguments("transfer_call", {"number": "+15551234567", "extra": 1})
    assert isinstance(parsed, TransferCallArguments) and parsed.number == "+15551234567"


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("transfer_call", {}, "number: Field required"),
        ("transfer_call", {"number": "12345"}, "number: String should match pattern"),
        ("transfer_call", {"number": 5551234567}, "number: Input should be a valid string"),
        ("send_dtmf", {"digits": "12a"}, "digits"),
        ("teleport", {}, "unknown tool 'teleport'"),
    ],
)
def test_invalid_arguments_are_clear_errors(name, arguments, expected):
    with pytest.raises(ToolArgumentError, match=expected):
        parse_arguments(name, arguments)


async def test_a_transport_without_a_phone_line_refuses_transfer_and_keys():
    control = PipelineCallControl("Goodbye.")
    transfer = parse_arguments("transfer_call", {"number": "+15551234567"})
    assert await perform(transfer, control, goodbye="Goodbye.") == {
        "error": "transferring is only possible on phone calls"
    }
    keys = parse_arguments("send_dtmf", {"digits": "12#"})
    assert "error" in await perform(keys, control, goodbye="Goodbye.")
    # end_call before the call runs is refused, not crashed
    ended = await perform(parse_arguments("end_call", {}), control, goodbye="Goodbye.")
    assert ended == {"error": "the call is not running"}
