"""Tool specs: the YAML a business writes for each function its bots may call.

A spec (``tools/<name>.yaml``) names the tool, tells the LLM what it does and
which arguments it takes (a JSON Schema), and says how to run it: a Python
function (``python: module:function``, sync or async; the module is looked up
next to the spec first, then on the import path) or an HTTP endpoint
(``http: {url, method, headers, ...}``, with ``${ENV_VAR}`` secrets). Loading a
spec checks everything that can be checked before a call: the schema is valid
JSON Schema, the module imports and the function exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from voxline.yamlfile import ConfigError, StrictModel, load_yaml_model

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""A tool's name: what the LLM calls, and the stem of its spec file."""


class HTTPHandler(StrictModel):
    """Call an HTTP endpoint with the tool's arguments.

    GET and DELETE send the arguments as query parameters; POST, PUT and PATCH as
    a JSON body. The response must be JSON; it is what the LLM sees.
    """

    url: str = Field(pattern=r"^(https?://|\$\{)", description="http(s) URL; ${ENV} allowed.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)

    def env_names(self) -> list[str]:
        """Environment variables the URL and headers refer to."""
        texts = [self.url, *self.headers.values()]
        return sorted({name for text in texts for name in ENV_REFERENCE.findall(text)})


class ToolSpec(StrictModel):
    """One tool function, as loaded from ``tools/<name>.yaml``.

    Exactly one of ``python`` or ``http`` says how it runs.
    """

    name: str = Field(pattern=rf"^{TOOL_NAME.pattern}$")
    description: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments (an object).",
    )
    python: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:function, the module next to this file or importable.",
    )
    http: HTTPHandler | None = None
    timeout_secs: float = Field(default=5.0, gt=0, le=120)

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except RecursionError:
            raise ValueError("the schema is nested too deeply to check: flatten it") from None
        except SchemaError as exc:
            where = "/".join(str(part) for part in exc.path) or "(top)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        if schema.get("type") != "object":
            raise ValueError("the arguments schema must have `type: object`")
        return schema

    @model_validator(mode="after")
    def _one_handler(self, info: ValidationInfo) -> ToolSpec:
        if (self.python is None) == (self.http is None):
            raise ValueError("give exactly one handler: `python: module:function` or `http:`")
        return self


def load_tool_spec(path: Path) -> ToolSpec:
    """Load and validate a tool spec; its Python handler must import.

    Raises:
        ConfigError: naming the file, the field and what was expected.
    """
    spec = load_yaml_model(path, ToolSpec)
    if spec.python is not None:
        try:
            resolve_python_handler(spec.python, Path(path).resolve().parent)
        except ValueError as exc:
            raise ConfigError(path, [f"python: {exc}"]) from None
    return spec


def resolve_python_handler(reference: str, base_dir: Path) -> Callable[..., Any]:
    """Import ``module:function``, looking for ``module`` next to the spec first.

    Raises:
        ValueError: the module cannot be imported, or has no such callable.
    """
    module_name, _, function_name = reference.partition(":")
    local = base_dir / (module_name.replace(".", "/") + ".py")
    try:
        if local.is_file():
            module = _import_file(local, module_name)
        else:
            module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any error while importing user code is a config error
        raise ValueError(
            f"cannot import module {module_name!r} (looked for {local} and on the import "
            f"path): {type(exc).__name__}: {exc}"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(f"module {module_name!r} has no function {function_name!r}")
    if not callable(function):
        raise ValueError(f"{reference} is not callable")
    return function


def _import_file(path: Path, module_name: str):
    """Import a handler module from a file, once per file, under a private name."""
    key = f"voxline_tool_handlers.{abs(hash(str(path.resolve())))}.{module_name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def is_coroutine_function(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` returns an awaitable to await (async def)."""
    return inspect.iscoroutinefunction(function)
