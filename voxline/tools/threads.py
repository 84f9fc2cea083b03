"""The bounded thread pool that blocking (``def``) tool handlers run in.

Blocking handlers run in :class:`ToolThreads`, a thread pool of its own, bounded, and
separate from the event loop's default executor (which the engines and pipecat use).
Python cannot stop a thread: a blocking handler that outlives its ``timeout_secs``
keeps its thread until it returns. So the pool counts the threads still busy, and
refuses at once (:class:`ToolFailure`, an error result for the LLM) a call that would
need a thread when all are busy, or a call of a tool that already has
:data:`MAX_HUNG_PER_TOOL` calls running past their timeout. A hung tool costs its own
callers an apology; it never makes other tools, or calls, wait without end.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

DEFAULT_TOOL_THREADS = 8
"""Threads for blocking handlers, per process (:class:`ToolThreads`)."""

MAX_HUNG_PER_TOOL = 2
"""Calls of one tool that may still run past their timeout before new calls of it
are refused at once."""


class ToolFailure(RuntimeError):
    """A tool call gave no usable result: its backend's answer was not one, or the call
    was refused (no thread free, too many hung calls of the tool)."""


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
