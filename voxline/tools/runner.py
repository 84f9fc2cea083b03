"""Run one YAML-defined tool call: validate the arguments, call the handler, bound the time.

Whatever goes wrong — arguments that do not match the schema, a handler that
raises, times out or answers with something that is not JSON or is too large, an
HTTP error — becomes an ``{"error": ...}`` result that the LLM sees and can
apologise for. The call itself never fails because of a tool, and no traceback
reaches the log: one line names the tool and what went wrong.

Blocking (``def``) handlers run in the process's bounded pool of their own
(:mod:`voxline.tools.threads`), which refuses a call at once rather than let a hung
tool make other tools, or calls, wait without end.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os
import traceback
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from voxline import logcontent
from voxline.engines.http_clients import async_client
from voxline.tools.spec import (
    ENV_REFERENCE,
    HTTPHandler,
    ToolSpec,
    is_coroutine_function,
    resolve_python_handler,
)
from voxline.tools.threads import ToolFailure, ToolThreads, tool_threads

MAX_RESULT_CHARS = 4000
"""The longest result (as JSON) the LLM is given; longer ones are an error result."""

MAX_HTTP_RESPONSE_BYTES = 1 << 20
"""The most an HTTP tool's endpoint may answer; a longer body is not read to its end."""

MIN_SECRET_CHARS = 4
"""Shorter ``${ENV}`` values are not taken out of error texts (they would mangle them)."""


def _json_default(value: Any) -> Any:
    """JSON for the values databases hand back; anything else is not JSON."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(f"a {type(value).__name__} is not JSON")


def _where(exc: BaseException) -> str:
    """The file and line a handler raised at, without its message (caller data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno}"


class ToolRunner:
    """A loaded tool spec, ready to be called with the LLM's arguments.

    Args:
        spec: the validated spec.
        base_dir: the spec file's folder (where its Python module lives).
        http_client: shared HTTP client for ``http:`` tools; one is made if omitted.
        threads: the pool blocking handlers run in (default: the process's).
    """

    def __init__(
        self,
        spec: ToolSpec,
        base_dir: Path,
        http_client: httpx.AsyncClient | None = None,
        *,
        threads: ToolThreads | None = None,
    ):
        from jsonschema import Draft202012Validator

        self.spec = spec
        self._validator = Draft202012Validator(spec.parameters)
        self._function: Callable[..., Any] | None = (
            resolve_python_handler(spec.python, base_dir) if spec.python else None
        )
        self._http_client = http_client
        self._threads = threads or tool_threads()

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
        """Call the tool; returns ``{"result": ...}`` or ``{"error": ...}``, never raises
        (cancellation aside).

        A failure is logged as one line naming the tool and what kind of failure it
        was (the exception's type, never its message: that can hold the caller's
        values); the error text follows only when ``log_content`` is on. The values
        of the spec's ``${ENV}`` references are taken out of the error, for the log
        and for the LLM, even when an endpoint echoes them back.
        """
        if problem := self.check_arguments(arguments):
            return self._failed(
                "arguments that do not fit its schema",
                f"invalid arguments for {self.name}: {problem}",
            )
        try:
            value = await self._call(dict(arguments))
        except TimeoutError:
            timeout = f"{self.spec.timeout_secs:g} s"
            return self._failed(
                f"TimeoutError after {timeout}", f"{self.name} did not answer within {timeout}"
            )
        except ToolFailure as exc:
            return self._failed("ToolFailure", f"{self.name} failed: {exc}")
        except (Exception, SystemExit) as exc:  # a business's handler may raise anything
            return self._failed(
                f"{type(exc).__name__}{_where(exc)}",
                f"{self.name} failed: {type(exc).__name__}: {str(exc)[:200]}",
            )
        try:
            text = json.dumps(value, default=_json_default, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            return self._failed(
                "a result that is not JSON",
                f"{self.name} returned a value that is not JSON: {exc}",
            )
        if len(text) > MAX_RESULT_CHARS:
            return self._failed(
                "a result over the size limit",
                f"{self.name} returned {len(text)} characters; the limit is {MAX_RESULT_CHARS}",
            )
        return {"result": json.loads(text)}

    def _failed(self, kind: str, error: str) -> dict[str, Any]:
        """The error result, logged: ``kind`` always, the error text with ``log_content``."""
        error = self._without_secrets(error)
        detail = f": {error}" if logcontent.enabled() else ""
        logger.warning(f"tool {self.name} failed: {kind}{detail}")
        return {"error": error}

    def _without_secrets(self, text: str) -> str:
        """``text`` with the value of each ``${ENV}`` the spec refers to put back as ``${ENV}``."""
        if self.spec.http is None:
            return text
        values = {name: os.environ.get(name, "") for name in self.spec.http.env_names()}
        # Longest first, so that a secret holding another is replaced whole.
        for name, value in sorted(values.items(), key=lambda item: -len(item[1])):
            if len(value) >= MIN_SECRET_CHARS:
                text = text.replace(value, f"${{{name}}}")
        return text

    async def _call(self, arguments: dict[str, Any]) -> Any:
        timeout = self.spec.timeout_secs
        if self._function is not None:
            if is_coroutine_function(self._function):
                async with asyncio.timeout(timeout):
                    return await self._function(**arguments)
            # Blocking handlers (a database, a SDK) must not stall every call's audio.
            return await self._threads.run(self.name, self._function, arguments, timeout)
        assert self.spec.http is not None
        async with asyncio.timeout(timeout):
            return await call_http(self.spec.http, arguments, self._http_client)


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

    Errors name the URL as the spec writes it (``${ENV}`` references unexpanded),
    never the substituted one: a secret in a URL stays out of the log and the LLM's
    context. At most :data:`MAX_HTTP_RESPONSE_BYTES` of the answer are read.

    Raises:
        ToolFailure: an HTTP error status, a connection failure, a body that is too
            large or not JSON.
    """
    url = substitute_env(handler.url)
    headers = {name: substitute_env(value) for name, value in handler.headers.items()}
    in_query = handler.method in ("GET", "DELETE")
    named = f"{handler.method} {handler.url}"
    own_client = client is None
    client = client or async_client()
    try:
        async with client.stream(
            handler.method,
            url,
            headers=headers,
            params=arguments if in_query else None,
            json=None if in_query else arguments,
        ) as response:
            body = bytearray()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > MAX_HTTP_RESPONSE_BYTES:
                    raise ToolFailure(f"{named} answered more than {MAX_HTTP_RESPONSE_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise ToolFailure(f"{named}: {type(exc).__name__}") from None
    finally:
        if own_client:
            await client.aclose()
    text = bytes(body).decode(response.encoding or "utf-8", errors="replace")
    if response.status_code >= 400:
        raise ToolFailure(f"{named} answered HTTP {response.status_code}: {text[:200]}")
    try:
        return json.loads(text)
    except ValueError:
        raise ToolFailure(
            f"{named} answered {response.headers.get('content-type', '?')}, "
            f"not JSON: {text[:120]!r}"
        ) from None
