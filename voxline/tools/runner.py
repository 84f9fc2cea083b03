"""Run one YAML-defined tool call: validate the arguments, call the handler, bound the time.

Whatever goes wrong — arguments that do not match the schema, a handler that
raises, times out or answers with something that is not JSON, an HTTP error —
becomes an ``{"error": ...}`` result that the LLM sees and can apologise for.
The call itself never fails because of a tool.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from voxline.tools.spec import (
    ENV_REFERENCE,
    HTTPHandler,
    ToolSpec,
    is_coroutine_function,
    resolve_python_handler,
)

MAX_RESULT_CHARS = 4000


class ToolRunner:
    """A loaded tool spec, ready to be called with the LLM's arguments.

    Args:
        spec: the validated spec.
        base_dir: the spec file's folder (where its Python module lives).
        http_client: shared HTTP client for ``http:`` tools; one is made if omitted.
    """

    def __init__(
        self, spec: ToolSpec, base_dir: Path, http_client: httpx.AsyncClient | None = None
    ):
        from jsonschema import Draft202012Validator

        self.spec = spec
        self._validator = Draft202012Validator(spec.parameters)
        self._function: Callable[..., Any] | None = (
            resolve_python_handler(spec.python, base_dir) if spec.python else None
        )
        self._http_client = http_client

    @property
    def name(self) -> str:
        """The tool's name as the LLM calls it."""
        return self.spec.name

    def openai_schema(self) -> dict[str, Any]:
        """The tool as the OpenAI ``tools`` list describes it."""
        return {
            "type": "function",
            "function": {
                "name": self.spec.name,
                "description": self.spec.description,
                "parameters": self.spec.parameters,
            },
        }

    def check_arguments(self, arguments: Any) -> str | None:
        """The first way ``arguments`` break the schema, or None when they fit."""
        if not isinstance(arguments, Mapping):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        errors = sorted(self._validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
        if not errors:
            return None
        first = errors[0]
        where = ".".join(str(part) for part in first.path) or "arguments"
        return f"{where}: {first.message}"

    async def run(self, arguments: Any) -> dict[str, Any]:
        """Call the tool; returns ``{"result": ...}`` or ``{"error": ...}``, never raises."""
        if problem := self.check_arguments(arguments):
            return {"error": f"invalid arguments for {self.name}: {problem}"}
        try:
            async with asyncio.timeout(self.spec.timeout_secs):
                value = await self._call(dict(arguments))
        except TimeoutError:
            return {"error": f"{self.name} did not answer within {self.spec.timeout_secs:g} s"}
        except ToolFailure as exc:
            return {"error": f"{self.name} failed: {exc}"}
        except Exception as exc:  # a business's handler may raise anything
            logger.opt(exception=exc).warning(f"tool {self.name} raised")
            return {"error": f"{self.name} failed: {type(exc).__name__}: {exc}"}
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError) as exc:
            return {"error": f"{self.name} returned a value that is not JSON: {exc}"}
        if len(text) > MAX_RESULT_CHARS:
            return {
                "error": f"{self.name} returned {len(text)} characters; the limit is "
                f"{MAX_RESULT_CHARS}"
            }
        return {"result": value}

    async def _call(self, arguments: dict[str, Any]) -> Any:
        if self._function is not None:
            if is_coroutine_function(self._function):
                return await self._function(**arguments)
            # Blocking handlers (a database, a SDK) must not stall every call's audio.
            return await asyncio.to_thread(self._function, **arguments)
        assert self.spec.http is not None
        return await call_http(self.spec.http, arguments, self._http_client)


class ToolFailure(RuntimeError):
    """A tool's backend answered, but not with a usable result."""


def substitute_env(text: str) -> str:
    """Replace ``${NAME}`` with the environment variable's value.

    Raises:
        ToolFailure: a referenced variable is not set.
    """

    def value(match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ToolFailure(f"environment variable {name} is not set")
        return os.environ[name]

    return ENV_REFERENCE.sub(value, text)


async def call_http(
    handler: HTTPHandler, arguments: dict[str, Any], client: httpx.AsyncClient | None
) -> Any:
    """Send the arguments to the tool's HTTP endpoint and return its JSON answer.

    Raises:
        ToolFailure: an HTTP error status, a connection failure or a non-JSON body.
    """
    url = substitute_env(handler.url)
    headers = {name: substitute_env(value) for name, value in handler.headers.items()}
    in_query = handler.method in ("GET", "DELETE")
    own_client = client is None
    client = client or httpx.AsyncClient()
    try:
        response = await client.request(
            handler.method,
            url,
            headers=headers,
            params=arguments if in_query else None,
            json=None if in_query else arguments,
        )
    except httpx.HTTPError as exc:
        raise ToolFailure(f"{handler.method} {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if own_client:
            await client.aclose()
    if response.status_code >= 400:
        raise ToolFailure(
            f"{handler.method} {url} answered HTTP {response.status_code}: {response.text[:200]}"
        )
    try:
        return response.json()
    except ValueError:
        raise ToolFailure(
            f"{handler.method} {url} answered {response.headers.get('content-type', '?')}, "
            f"not JSON: {response.text[:120]!r}"
        ) from None
