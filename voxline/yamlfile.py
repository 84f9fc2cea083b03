"""Load a YAML file into a pydantic model with errors a person can act on.

Every configuration file voxline reads (personas, tool specs, the server config)
goes through :func:`load_yaml_model`, so a mistake is always reported the same
way: the file, the path of the field inside it, what was expected and what was
found, one line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file could not be loaded; ``problems`` holds one line each."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {problem}" for problem in problems))


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names allowed at ``loc``'s parent, for an unknown-key hint."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        fields = getattr(current, "model_fields", {})
        if item not in fields:
            return []
        annotation = fields[item].annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]
        current = annotation if isinstance(annotation, type) else (inner[0] if inner else None)
    return sorted(getattr(current, "model_fields", {}))


def describe_validation_error(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per pydantic error: field path, what was expected, what was found."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = _field_path(loc)
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = f"; allowed fields here: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{where}: unknown field (check its spelling){hint}")
        elif item["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        else:
            found = item.get("input")
            problems.append(f"{where}: {item['msg']} (found {found!r})")
    return problems


def read_yaml(path: Path) -> Any:
    """Parse one YAML file, turning every failure into a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot be read: {exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}YAML syntax error: {problem}"]) from None


def load_yaml_model(path: Path | str, model: type[ModelT], **context: Any) -> ModelT:
    """Read ``path`` and validate it as ``model``.

    Args:
        path: the YAML file.
        model: the pydantic model the document must match.
        **context: passed to pydantic validators (e.g. the file's directory).

    Raises:
        ConfigError: naming the file, each field path and what was expected.
    """
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        raise ConfigError(path, ["the file is empty: expected a mapping of fields"])
    if not isinstance(data, dict):
        raise ConfigError(
            path, [f"expected a mapping of fields at the top level, found {type(data).__name__}"]
        )
    try:
        return model.model_validate(data, context={"base_dir": path.parent, **context})
    except ValidationError as exc:
        raise ConfigError(path, describe_validation_error(model, exc)) from None
