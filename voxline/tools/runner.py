"""Run one YAML-defined tool call: validate the arguments, call the handler, bound the time.

Whatever goes wrong — arguments that do not match the schema, a handler that
raises, times out or answers with something that is not JSON or is too large, an
HTTP error — becomes an ``{"error": ...}`` result that the LLM sees and can
apologise for. The call itself never fails because of a tool, and no traceback
reaches the log: one line names the tool and what went wrong.

Blocking (``def``) handlers run in :class:`ToolThreads`, a thread pool of its own,
bounded, and separate from the event loop's default executor (which the engines
and pipecat use). Python cannot stop a thread: a blocking handler that outlives
its ``timeout_secs`` keeps its thread until it returns. So the pool counts the
threads still busy, and refuses at once, with an error result, a call that would
need a thread when all are busy, or a call of a tool that already has
:data:`MAX_HUNG_PER_TOOL` calls running past their timeout. A hung tool costs
its own callers an apology; it never makes other tools, or calls, wait without end.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import decimal
import functools
import json
import os
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from voxline import logcontent
from voxline.tools.spec import (
    ENV_REFERENCE,
    HTTPHandler,
    ToolSpec,
    is_coroutine_function,
    resolve_python_handler,
)

MAX_RESULT_CHARS = 4000
"""The longest result (as JSON) the LLM is given; longer ones are an error result."""

MAX_HTTP_RESPONSE_BYTES = 1 << 20
"""The most an HTTP tool's endpoint may answer; a longer body is not read to its end."""

DEFAULT_TOOL_THREADS = 8
"""Threads for blocking handlers, per process (:class:`ToolThreads`)."""

MIN_SECRET_CHARS = 4
"""Shorter ``${ENV}`` values are not taken out of error texts (they would mangle them)."""

MAX_HUNG_PER_TOOL = 2
"""Calls of one tool that may still run past their timeout before new calls of it
are refused at once."""


class ToolThreads:
    """A bounded pool of threads for blocking tool handlers, which knows the hung ones.

    Each call runs in a daemon thread of its own, so a handler that never returns
    cannot keep the process from exiting; at most ``max_threads`` run at once.

    Args:
        max_threads: threads in the pool; a call that finds them all busy (running
            or hung past their timeout) is refused instead of queued.
        max_hung_per_tool: calls of one tool that may still be running past their
            timeout; the next call of that tool is refused.
    """

    def __init__(
        self,
        max_threads: int = DEFAULT_TOOL_THREADS,
        *,
        max_hung_per_tool: int = MAX_HUNG_PER_TOOL,
    ):
        if max_threads < 1 or max_hung_per_tool < 1:
            raise ValueError("max_threads and max_hung_per_tool must be >= 1")
        self.max_threads = max_threads
        self.max_hung_per_tool = max_hung_per_tool
        self._lock = threading.Lock()
        self._busy = 0
        self._hung: Counter[str] = Counter()
        self._running: set[Future[Any]] = set()

    @property
    def busy(self) -> int:
        """Threads running a handler now, hung ones included."""
        with self._lock:
            return self._busy

    def hung(self, tool: str) -> int:
        """Calls of ``tool`` still running past their timeout."""
        with self._lock:
            return self._hung[tool]

    async def run(
        self, tool: str, function: Callable[..., Any], arguments: dict[str, Any], timeout: float
    ) -> Any:
        """Run ``function(**arguments)`` in a pool thread, waiting at most ``timeout`` s.

        Raises:
            ToolFailure: no thread is free, or ``tool`` has too many hung calls.
            TimeoutError: the handler did not return in time (its thread is then
                counted as hung until the handler returns).
        """
        with self._lock:
            if self._hung[tool] >= self.max_hung_per_tool:
                raise ToolFailure(
                    f"{self._hung[tool]} earlier calls of it are still running past their "
                    "timeout; not calling it again until they end"
                )
            if self._busy >= self.max_threads:
                raise ToolFailure(
                    f"all {self.max_threads} tool threads are busy ({sum(self._hung.values())} "
                    "with calls past their timeout); try again later"
                )
            self._busy += 1
        future: Future[Any] = Future()
        state = {"hung": False}
        with self._lock:
            self._running.add(future)
        future.add_done_callback(lambda done: self._done(tool if state["hung"] else None, done))
        call = functools.partial(contextvars.copy_context().run, function, **arguments)

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting call, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)

        # A daemon thread per call (their number is bounded above), not an executor's:
        # at exit Python joins every executor thread, and a hung handler would then keep
        # the process from ending.
        thread = threading.Thread(target=work, name=f"voxline-tool-{tool}", daemon=True)
        try:
            thread.start()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            with self._lock:
                if not future.done():
                    state["hung"] = True
                    self._hung[tool] += 1
            raise

    def _done(self, hung_tool: str | None, future: Future[Any] | None) -> None:
        with self._lock:
            self._busy -= 1
            if hung_tool is not None:
                self._hung[hung_tool] -= 1
            self._running.discard(future)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Wait until every handler started so far has returned (hung ones included)."""
        with self._lock:
            running = list(self._running)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in running), return_exceptions=True)


_shared_threads: ToolThreads | None = None


def tool_threads() -> ToolThreads:
    """The process's pool for blocking handlers (made on first use)."""
    global _shared_threads
    if _shared_threads is None:
        _shared_threads = ToolThreads()
    return _shared_threads


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
    client = client or httpx.AsyncClient()
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
