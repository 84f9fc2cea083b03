"""Load persona files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voxline.personas.schema import Persona
from voxline.yamlfile import load_yaml_model

TOOL_SPEC_KEYS = frozenset({"python", "http", "parameters"})
"""Keys only a tool spec has: a file with one of them is a tool spec."""


def load_persona(path: Path | str, *, default_llm_model: str | None = None) -> Persona:
    """Load and validate one persona YAML file.

    Args:
        path: the persona file.
        default_llm_model: the model of a persona whose file names no ``llm.model``;
            ``serve`` and ``talk`` pass the server config's ``engines.llm.model``.
            ``None`` keeps the schema's default (``smollm2``).

    Raises:
        voxline.yamlfile.ConfigError: naming the file, the field and what was expected.
    """
    return load_yaml_model(
        path, Persona, wrong_kind=_not_a_persona, default_llm_model=default_llm_model
    )


def _not_a_persona(document: dict[Any, Any]) -> str | None:
    """Say so when the document is a tool spec or a server config, not a persona."""
    from voxline.config import ServerConfig

    keys = set(document)
    if keys & TOOL_SPEC_KEYS and not keys & {"prompt", "prompt_file"}:
        return (
            "this is a tool spec, not a persona: list its name under a persona's `tools` "
            "(check it with `voxline check`)"
        )
    if keys & ServerConfig.model_fields.keys() and not keys & Persona.model_fields.keys():
        return "this is a server config (voxline.yaml), not a persona: give it with --config"
    return None
