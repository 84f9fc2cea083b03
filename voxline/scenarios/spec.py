"""The scenario file: spoken conversations with a persona and what must happen in them.

A scenario file (``personas/<name>.tests.yaml`` beside the persona, or any path) holds
a list of scenarios. Each scenario is a call: caller turns (``say``, ``audio``,
``dtmf``, ``silence``, optionally spoken over the bot with ``barge_in_after``) and,
on each turn, expectations on the bot's reply as heard, the tools it called, how
fast it answered and whether it ended or transferred the call. Unknown keys are
errors, so a misspelt expectation never silently passes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from voxline.yamlfile import StrictModel

ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class ArgumentMatcher(StrictModel):
    """How one tool argument must look: ``equals`` a value, match a ``regex``, or ``any``.

    A plain value in the file (``card_last4: "4821"``) means ``equals``.
    """

    equals: Any = None
    regex: str | None = None
    any: bool = False

    @model_validator(mode="before")
    @classmethod
    def _plain_value_equals(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) <= {"equals", "regex", "any"} and value:
            return value
        return {"equals": value}

    @model_validator(mode="after")
    def _one_kind(self) -> ArgumentMatcher:
        kinds = [self.equals is not None, self.regex is not None, self.any]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of equals, regex or any: true")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self

    def matches(self, value: Any) -> bool:
        """Whether the argument's value (missing: ``None``) fits."""
        if self.any:
            return value is not None
        if self.regex is not None:
            return value is not None and re.fullmatch(self.regex, str(value)) is not None
        return value == self.equals or (
            not isinstance(value, (dict, list)) and str(value) == str(self.equals)
        )

    def describe(self) -> str:
        """The matcher in a failure message."""
        if self.any:
            return "any value"
        if self.regex is not None:
            return f"matching /{self.regex}/"
        return f"= {self.equals!r}"


class ToolExpectation(StrictModel):
    """A tool the bot must call in the turn, with matchers for its arguments.

    ``tool_called: get_balance`` names the tool alone.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    arguments: dict[str, ArgumentMatcher] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class HeardExpectations(StrictModel):
    """Expectations on what the caller heard the bot say (its audio, transcribed)."""

    reply_contains: list[str] = Field(
        default_factory=list,
        description="Words (after normalisation) or /regex/ the reply as heard must hold.",
    )
    reply_not_contains: list[str] = Field(
        default_factory=list, description="Words or /regex/ the reply as heard must not hold."
    )

    @field_validator("reply_contains", "reply_not_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("reply_contains", "reply_not_contains")
    @classmethod
    def _patterns_compile(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.strip():
                raise ValueError("an empty phrase matches everything: write the words")
            if is_regex(value):
                try:
                    re.compile(value[1:-1])
                except re.error as exc:
                    raise ValueError(f"{value} does not compile: {exc}") from None
        return values


def is_regex(phrase: str) -> bool:
    """A phrase written ``/like this/`` is a regular expression."""
    return len(phrase) >= 2 and phrase.startswith("/") and phrase.endswith("/")


class Turn(HeardExpectations):
    """One caller turn and what must follow it.

    Exactly one action: ``say`` (words spoken by the scenario's voice), ``audio`` (a
    WAV file, relative to the scenario file), ``dtmf`` (keypad digits) or
    ``silence`` (seconds of saying nothing). ``barge_in_after`` makes a ``say`` or
    ``audio`` turn start once that many seconds of the bot's current reply (or the
    greeting) have played, speaking over it, instead of waiting for it to end.
    """

    say: str | None = Field(default=None, min_length=1, max_length=1000)
    audio: Path | None = None
    dtmf: str | None = Field(default=None, pattern=r"^[0-9*#]{1,32}$")
    silence: float | None = Field(default=None, gt=0, le=120)
    barge_in_after: float | None = Field(default=None, ge=0, le=60)
    tool_called: list[ToolExpectation] = Field(default_factory=list)
    no_tool: bool = False
    max_first_reply_ms: float | None = Field(default=None, gt=0)
    call_ended: bool | None = None
    transferred_to: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")

    @field_validator("tool_called", mode="before")
    @classmethod
    def _one_or_many_tools(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @model_validator(mode="after")
    def _one_action(self) -> Turn:
        actions = [name for name in ("say", "audio", "dtmf", "silence") if getattr(self, name)]
        if len(actions) != 1:
            found = ", ".join(actions) or "none"
            raise ValueError(f"give exactly one of say, audio, dtmf or silence (found {found})")
        if self.barge_in_after is not None and actions[0] not in ("say", "audio"):
            raise ValueError("barge_in_after goes with say or audio: the caller speaks over")
        if self.no_tool and self.tool_called:
            raise ValueError("no_tool and tool_called contradict each other: keep one")
        return self

    @property
    def action(self) -> str:
        """Which caller action the turn is."""
        return next(name for name in ("say", "audio", "dtmf", "silence") if getattr(self, name))


class Voice(StrictModel):
    """Who says the scenario's ``say`` turns.

    ``piper`` with a Piper voice name (default: the packaged ``en_US-joe-medium``), or
    ``espeak`` with an espeak-ng voice (default ``en-us``; a very different voice).
    ``speed`` 1.0 is the voice's normal pace; 1.3 is 30 % faster.
    """

    engine: Literal["piper", "espeak"] = "piper"
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_+.-]+$")
    speed: float = Field(default=1.0, ge=0.5, le=2.0)


class Scenario(StrictModel):
    """One call: its caller, its turns, fixtures for its tools, and an optional judge."""

    name: str = Field(min_length=1, max_length=200)
    voice: Voice = Voice()
    tool_choice: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Overrides the persona's llm.tool_choice for this call (auto, none, "
        "required or a tool name): the way to test a tool with a model that does not "
        "choose tools by itself.",
    )
    tool_results: dict[str, Any] = Field(
        default_factory=dict,
        description="What a tool returns in this scenario instead of running its handler.",
    )
    greeting: HeardExpectations | None = None
    judge: str | None = Field(
        default=None, min_length=1, description="A statement about the call an LLM must find true."
    )
    timeout_secs: float = Field(
        default=60.0, gt=0, le=600, description="Longest wait for the bot after any turn."
    )
    turns: list[Turn] = Field(min_length=1, max_length=30)


class StandInRoute(StrictModel):
    """One answer of an HTTP stand-in: for ``method path``, this status and JSON body."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = Field(pattern=r"^/[^\s?#]*$")
    status: int = Field(default=200, ge=100, le=599)
    json_body: Any = Field(default_factory=dict, alias="json")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StandIn(StrictModel):
    """A local HTTP server that stands in for a tool's real API during the run.

    It listens on 127.0.0.1; its base URL goes into the environment variable ``env``,
    which the tool spec's URL names (``url: ${RESTAURANT_API_URL}/bookings``).
    """

    env: str = Field(pattern=ENV_NAME)
    routes: list[StandInRoute] = Field(min_length=1, max_length=50)


class Judge(StrictModel):
    """Where the optional LLM judge runs: any OpenAI-compatible server.

    Unset, the judge is the persona's own LLM server.
    """

    base_url: str | None = Field(default=None, pattern=r"^https?://")
    model: str | None = None
    api_key_env: str | None = Field(default=None, pattern=ENV_NAME)


class FileSettings(StrictModel):
    """What a scenario file says besides its scenarios."""

    persona: Path | None = Field(
        default=None,
        description="The persona file, relative to this file; default: this file's name "
        "without .tests (bank_support.tests.yaml -> bank_support.yaml).",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment for the tools (never secrets)."
    )
    stand_ins: list[StandIn] = Field(default_factory=list, max_length=10)
    judge: Judge = Judge()

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name (A-Z, 0-9, _)")
        return env


class ScenarioFile(FileSettings):
    """A file of scenarios for one persona."""

    scenarios: list[Scenario] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _unique_names(self) -> ScenarioFile:
        names = [scenario.name for scenario in self.scenarios]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"scenario names must be unique: {', '.join(duplicates)}")
        return self
