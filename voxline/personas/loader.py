"""Load persona files."""

from __future__ import annotations

from pathlib import Path

from voxline.personas.schema import Persona
from voxline.yamlfile import load_yaml_model


def load_persona(path: Path | str) -> Persona:
    """Load and validate one persona YAML file.

    Raises:
        voxline.yamlfile.ConfigError: naming the file, the field and what was expected.
    """
    return load_yaml_model(path, Persona)
