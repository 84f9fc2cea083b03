"""Load persona files."""

from __future__ import annotations

from pathlib import Path

from voxline.personas.schema import Persona
from voxline.yamlfile import load_yaml_model


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
    return load_yaml_model(path, Persona, default_llm_model=default_llm_model)
