"""Read scenario files and check them against their personas before any call starts.

Every problem is one line: the file, the scenario, the field and what was expected.
A suite with any problem does not run (``voxline test`` exits 2), so a typo in an
expectation, a missing audio file or a tool the persona does not have is found
in a second, not after minutes of calls.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from voxline.personas import Persona, load_persona
from voxline.scenarios.spec import FileSettings, Scenario, ScenarioFile
from voxline.tools.builtins import BUILTINS
from voxline.yamlfile import ConfigError, describe_validation_error, read_yaml


class ScenarioFileError(ValueError):
    """Scenario files that cannot run; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class LoadedScenario:
    """A scenario ready to run: its file, its persona (with the scenario's overrides)
    and the caller audio of its ``audio`` turns, by turn index."""

    path: Path
    scenario: Scenario
    persona: Persona
    audio: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``file::scenario``, as the report and JUnit name it."""
        return f"{self.path.name}::{self.scenario.name}"


@dataclass
class Suite:
    """Every scenario of the files given, with the files' environment and stand-ins."""

    files: list[tuple[Path, ScenarioFile]]
    scenarios: list[LoadedScenario]


def default_persona_path(path: Path) -> Path:
    """``bank_support.tests.yaml`` -> ``bank_support.yaml`` in the same folder."""
    name = re.sub(r"\.tests?\.ya?ml$", "", path.name)
    if name == path.name:
        name = path.stem
    return path.with_name(f"{name}.yaml")


def _where(path: Path, data: Any, loc: str) -> str:
    """``FILE: scenario 'NAME': rest`` for a field path inside ``scenarios[i]``."""
    match = re.match(r"scenarios\[(\d+)\]\.?(.*)", loc)
    if not match:
        return f"{path}: {loc}"
    index, rest = int(match.group(1)), match.group(2)
    name = None
    if isinstance(data, dict) and isinstance(data.get("scenarios"), list):
        scenarios = data["scenarios"]
        if index < len(scenarios) and isinstance(scenarios[index], dict):
            name = scenarios[index].get("name")
    who = f"scenario {name!r}" if isinstance(name, str) else f"scenarios[{index}]"
    return f"{path}: {who}: {rest or '(the scenario)'}"


MAX_SCENARIOS = 200


def read_scenario_file(path: Path) -> tuple[ScenarioFile | None, list[str]]:
    """Parse and validate one file (not yet checked against its persona).

    Each scenario is validated on its own, so every bad scenario of the file is
    reported, not only the first. Returns the file with its valid scenarios (None
    if none is, or its settings are bad) and one line per problem.
    """
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        return None, str(exc).splitlines()
    if not isinstance(data, dict):
        found = "nothing" if data is None else type(data).__name__
        return None, [f"{path}: expected a mapping with `scenarios:` (a list), found {found}"]
    problems: list[str] = []
    settings = {key: value for key, value in data.items() if key != "scenarios"}
    try:
        header = FileSettings.model_validate(settings)
    except ValidationError as exc:
        problems += [f"{path}: {line}" for line in describe_validation_error(FileSettings, exc)]
        header = None
    items = data.get("scenarios")
    if not isinstance(items, list) or not items:
        problems.append(f"{path}: scenarios: expected a list of one or more scenarios")
        items = []
    elif len(items) > MAX_SCENARIOS:
        problems.append(f"{path}: scenarios: at most {MAX_SCENARIOS} scenarios in one file")
        items = []
    scenarios: list[Scenario] = []
    for index, item in enumerate(items):
        try:
            scenarios.append(Scenario.model_validate(item))
        except ValidationError as exc:
            for line in describe_validation_error(Scenario, exc):
                loc, _, message = line.partition(": ")
                where = _where(path, data, f"scenarios[{index}].{loc}".rstrip("."))
                problems.append(f"{where}: {message}")
    names = [scenario.name for scenario in scenarios]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"{path}: scenarios: names must be unique: {', '.join(duplicates)}")
    if header is None or not scenarios or duplicates:
        return None, problems
    return ScenarioFile(**header.model_dump(by_alias=True), scenarios=scenarios), problems


def _check_against_persona(
    path: Path, scenario: Scenario, persona: Persona, problems: list[str]
) -> None:
    def problem(field_path: str, message: str) -> None:
        problems.append(f"{path}: scenario {scenario.name!r}: {field_path}: {message}")

    tools = persona.tools
    listed = ", ".join(tools) or "none"
    choice = scenario.tool_choice
    if choice is not None and choice not in ("auto", "none", "required") and choice not in tools:
        problem("tool_choice", f"{choice!r} is not a tool of persona {persona.name} ({listed})")
    for name in scenario.tool_results:
        if name in BUILTINS:
            problem(
                f"tool_results.{name}",
                "built-in tools act on the call and cannot be replaced; expect them instead",
            )
        elif name not in tools:
            problem(f"tool_results.{name}", f"persona {persona.name} has no such tool ({listed})")
    for index, turn in enumerate(scenario.turns):
        for expected in turn.tool_called:
            if expected.name not in tools:
                problem(
                    f"turns[{index}].tool_called",
                    f"persona {persona.name} has no tool {expected.name!r} ({listed})",
                )
        if turn.transferred_to and "transfer_call" not in tools:
            problem(f"turns[{index}].transferred_to", "the persona has no transfer_call tool")
    if scenario.voice.engine == "espeak" and shutil.which("espeak-ng") is None:
        problem("voice.engine", "espeak-ng is not installed (apt-get install espeak-ng)")


def _load_audio(path: Path, loaded: LoadedScenario, problems: list[str]) -> None:
    from voxline.bot.audio_input import AudioInputError, read_caller_audio

    for index, turn in enumerate(loaded.scenario.turns):
        if turn.audio is None:
            continue
        clip = turn.audio if turn.audio.is_absolute() else path.parent / turn.audio
        try:
            loaded.audio[index] = read_caller_audio(clip)
        except AudioInputError as exc:
            problems.append(
                f"{path}: scenario {loaded.scenario.name!r}: turns[{index}].audio: {exc}"
            )


def with_tool_choice(persona: Persona, tool_choice: str | None) -> Persona:
    """The persona with the scenario's ``tool_choice`` forced (its prompt and tools unchanged,
    so the LLM server's cached prefix still serves it)."""
    if tool_choice is None or tool_choice == persona.llm.tool_choice:
        return persona
    llm = persona.llm.model_copy(update={"tool_choice": tool_choice})
    return persona.model_copy(update={"llm": llm})


def load_suite(
    paths: list[Path], *, persona_path: Path | None = None, default_llm_model: str | None = None
) -> Suite:
    """Load every file and check each scenario against its persona.

    Args:
        paths: scenario files (``*.tests.yaml``) or folders holding them.
        persona_path: the persona for every file (``--persona``), instead of each file's.
        default_llm_model: the server config's LLM model for personas that name none.

    Raises:
        ScenarioFileError: every problem found, one line each.
    """
    problems: list[str] = []
    files: list[tuple[Path, ScenarioFile]] = []
    scenarios: list[LoadedScenario] = []
    personas: dict[Path, Persona] = {}
    for path in _expand(paths, problems):
        document, found = read_scenario_file(path)
        problems += found
        if document is None:
            continue
        files.append((path, document))
        persona_file = persona_path or (
            path.parent / document.persona if document.persona else default_persona_path(path)
        )
        persona_file = persona_file.resolve()
        if persona_file not in personas:
            if not persona_file.is_file():
                problems.append(
                    f"{path}: persona: {persona_file} does not exist (name it with `persona:` "
                    "or --persona)"
                )
                continue
            try:
                personas[persona_file] = load_persona(
                    persona_file, default_llm_model=default_llm_model
                )
            except ConfigError as exc:
                problems += [f"{path}: persona: {line}" for line in str(exc).splitlines()]
                continue
        persona = personas[persona_file]
        for scenario in document.scenarios:
            _check_against_persona(path, scenario, persona, problems)
            loaded = LoadedScenario(path, scenario, with_tool_choice(persona, scenario.tool_choice))
            _load_audio(path, loaded, problems)
            scenarios.append(loaded)
    _check_environment(files, problems)
    if problems:
        raise ScenarioFileError(problems)
    return Suite(files=files, scenarios=scenarios)


def _expand(paths: list[Path], problems: list[str]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            matches = sorted(path.glob("*.tests.yaml"))
            if not matches:
                problems.append(f"{path}: no *.tests.yaml scenario files in this folder")
            found += matches
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file")
    return found


def _check_environment(files: list[tuple[Path, ScenarioFile]], problems: list[str]) -> None:
    """Two files must not give one environment variable different values."""
    owners: dict[str, tuple[Path, str]] = {}
    for path, document in files:
        values = dict(document.env)
        values.update({stand_in.env: "(a stand-in's URL)" for stand_in in document.stand_ins})
        for name, value in values.items():
            if name in owners and owners[name][1] != value:
                problems.append(
                    f"{path}: env.{name}: already set to another value by {owners[name][0]}; "
                    "run the files separately"
                )
            owners.setdefault(name, (path, value))
