"""``voxline check``: validate personas, tool specs and server configs before they reach a call."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2
_TOOL_KEYS = {"python", "http", "parameters"}


def _is_server_config(document: object) -> bool:
    """Whether a parsed file is a ``voxline.yaml``: server keys and no persona key."""
    from voxline.config import ServerConfig
    from voxline.personas import Persona

    if not isinstance(document, dict):
        return False
    keys = set(document)
    return bool(keys & ServerConfig.model_fields.keys()) and not keys & Persona.model_fields.keys()


def _check_server_config(path: Path) -> str:
    """Validate a server config, every persona it names and its stream-key file.

    Returns:
        The ``ok`` line's summary.

    Raises:
        ConfigError: naming the config (or the persona) file and the field.
    """
    from voxline.config import load_config
    from voxline.server.serve import load_personas
    from voxline.transports.twilio_webhook import (
        StreamSecretError,
        secret_file_warning,
        stream_secret,
    )
    from voxline.yamlfile import ConfigError

    config = load_config(path)
    personas = load_personas(config, path)
    try:
        # The file only: this shell's $VOXLINE_STREAM_SECRET is not the server's.
        stream_secret(config.twilio.stream_secret_file, environ={})
    except StreamSecretError as exc:
        raise ConfigError(path, [f"twilio.stream_secret_file: {exc}"]) from None
    if (warning := secret_file_warning(config.twilio.stream_secret_file)) is not None:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    names = ", ".join(persona.name for persona in personas.values())
    return f"server config; personas {names}; max_calls {config.max_calls}"


def _check_scenarios(path: Path) -> str:
    """Validate a scenario file (``voxline test``) against its persona.

    Raises:
        ConfigError: one line per problem, as ``voxline test`` reports them.
    """
    from voxline.scenarios.load import ScenarioFileError, load_suite
    from voxline.yamlfile import ConfigError

    try:
        suite = load_suite([path])
    except ScenarioFileError as exc:
        prefix = f"{path}: "
        raise ConfigError(path, [line.removeprefix(prefix) for line in exc.problems]) from None
    return f"{len(suite.scenarios)} scenarios for persona {suite.scenarios[0].persona.name}"


def check_paths(paths: list[Path]) -> int:
    """Validate each file; print ``ok`` or every problem (file, field, expectation).

    A file with a ``python``, ``http`` or ``parameters`` key is a tool spec: its
    schema must be valid JSON Schema and its handler must import. A file with only
    server keys (``engines``, ``max_calls``, ``numbers``, ...) is a ``voxline.yaml``:
    it and every persona it names must be valid. A file with ``scenarios`` is a
    ``voxline test`` scenario file, checked against its persona. Anything else is a persona: its
    tools must resolve to built-ins or valid specs.

    Returns:
        0 when every file is valid, 2 otherwise.
    """
    from voxline.personas import load_persona
    from voxline.tools.spec import load_tool_spec
    from voxline.yamlfile import ConfigError, read_yaml

    failed = False
    names: dict[str, Path] = {}
    for path in paths:
        try:
            document = read_yaml(path)
            if isinstance(document, dict) and "scenarios" in document:
                print(f"{path}: ok ({_check_scenarios(path)})")
            elif _is_server_config(document):
                print(f"{path}: ok ({_check_server_config(path)})")
            elif isinstance(document, dict) and _TOOL_KEYS & document.keys():
                spec = load_tool_spec(path)
                if spec.name in names:
                    raise ConfigError(
                        path, [f"name: tool {spec.name!r} is also defined in {names[spec.name]}"]
                    )
                names[spec.name] = path
                handler = spec.python or ""
                if spec.http is not None:
                    handler = f"{spec.http.method} {spec.http.url}"
                    unset = [name for name in spec.http.env_names() if name not in os.environ]
                    if unset:
                        print(
                            f"{path}: warning: http: {', '.join(unset)} not set in this "
                            "environment; the tool fails until the server has them",
                            file=sys.stderr,
                        )
                print(f"{path}: ok (tool {spec.name} -> {handler})")
            else:
                persona = load_persona(path)
                tools = ", ".join(persona.tools) or "no tools"
                print(f"{path}: ok (persona {persona.name}; {tools})")
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
    return EXIT_BAD_INPUT if failed else EXIT_OK
