"""How ``voxline serve`` answers SIGINT and SIGTERM, during start-up and once serving.

During start-up a signal cancels the task that is starting (which stops whatever it
started as it unwinds). Once serving, the first signal drains (no new calls, the calls
in progress go on for up to ``drain_timeout_secs``), a second one stops at once, and a
third does not wait for anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from voxline.server.drain import Drain

EXIT_BY_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""The process's exit code when a signal stopped it before a complete drain."""


class DrainOnSignal:
    """While the server runs: the first SIGINT or SIGTERM drains, the next ones stop it.

    A signal before the server listens, or a second one, stops the server at once
    (``should_exit``: every connection is closed); a third does not wait at all.
    ``stopped_by`` is the signal that stopped it without a complete drain, if any.
    """

    def __init__(self, server, drain: Drain):
        self.server = server
        self.drain = drain
        self.received: list[signal.Signals] = []
        self.stopped_by: signal.Signals | None = None
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> DrainOnSignal:
        loop = asyncio.get_running_loop()
        for sig in EXIT_BY_SIGNAL:
            loop.add_signal_handler(sig, self._handle, sig)
        return self

    def __exit__(self, *_exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in EXIT_BY_SIGNAL:
            loop.remove_signal_handler(sig)
        if self._task is not None:
            self._task.cancel()

    def _handle(self, sig: signal.Signals) -> None:
        self.received.append(sig)
        name = sig.name
        if len(self.received) == 1 and self.server.started:
            calls = self.drain.admission.active
            say(
                f"voxline: {name}: draining: no new calls; {calls} in progress may go on for "
                f"up to {self.drain.timeout_secs:g} s (drain_timeout_secs); {name} again stops "
                "at once"
            )
            self._task = asyncio.ensure_future(self._drain_then_stop())
            return
        if self.server.should_exit and self.stopped_by is not None:
            self.server.force_exit = True
            return
        say(f"voxline: {name}: stopping now")
        self.stopped_by = sig
        self.drain.begin()
        if self._task is not None:
            self._task.cancel()
        self.server.should_exit = True

    async def _drain_then_stop(self) -> None:
        await self.drain.run()
        say("voxline: drained: stopping")
        self.server.should_exit = True


def say(message: str) -> None:
    """Tell the operator on stderr, if anyone still reads it: a server whose parent has
    gone (its stderr a pipe nobody reads) must still drain and stop on a signal, and a
    failed write here would leave the signal unanswered."""
    with contextlib.suppress(OSError, ValueError):  # a closed pipe or file
        print(message, file=sys.stderr, flush=True)


class signals_cancel_this_task:
    """While the body runs, SIGINT and SIGTERM cancel the current task.

    Start-up is long (a model conversion, vLLM loading): a signal then must still
    stop what was started, which the cancelled task does as it unwinds through the
    Runtime. Yields a list that holds the signal received, if any.
    """

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []

    async def __aenter__(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def cancel(sig: signal.Signals) -> None:
            self.received.append(sig)
            task.cancel()

        for sig in EXIT_BY_SIGNAL:
            loop.add_signal_handler(sig, cancel, sig)
        return self.received

    async def __aexit__(self, *_exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in EXIT_BY_SIGNAL:
            loop.remove_signal_handler(sig)
