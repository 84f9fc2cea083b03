"""Whether the model servers answer, for ``/health/ready``: checked in the background.

Two kinds of trouble are told apart. A server that refuses the connection, resets
it or answers an error is down, and readiness says so at the next check. A server
that takes the connection and answers late is usually busy: llama.cpp's Python
server answers ``GET /v1/models`` behind the generation it is running, so at four
calls its checks time out while every call is being answered. A busy server stays
ready until it has been late for ``busy_limit_secs`` in a row; longer than that it
is as good as hung, and readiness reports it.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger

from voxline.bot.runtime import Runtime
from voxline.engines.server_process import LLMServerBusyError
from voxline.server.background import BackgroundJob

HEALTH_CHECK_INTERVAL_SECS = 5.0
HEALTH_CHECK_TIMEOUT_SECS = 2.0
HEALTH_BUSY_LIMIT_SECS = 30.0


class ServerHealth(BackgroundJob):
    """Whether the model servers answer, checked in the background on an interval.

    A readiness probe reads :meth:`problems`, which costs no I/O: the verdict of the
    last check, plus any embedded server known to be down right now (its
    supervisor saw it exit), so a crash is reported at once, not one interval later.

    Args:
        runtime: whose servers to check.
        interval_secs: time between checks.
        timeout_secs: how long one server may take to answer a check.
        busy_limit_secs: how long a server may keep answering late before it is a problem.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_secs: float = HEALTH_CHECK_INTERVAL_SECS,
        timeout_secs: float = HEALTH_CHECK_TIMEOUT_SECS,
        busy_limit_secs: float = HEALTH_BUSY_LIMIT_SECS,
    ):
        self._runtime = runtime
        self.interval_secs = interval_secs
        self.timeout_secs = timeout_secs
        self.busy_limit_secs = busy_limit_secs
        self._last: list[str] = []
        self._late_since: dict[str, float] = {}  # a late server's message: when it began
        self.checks = 0

    def problems(self) -> list[str]:
        """What is wrong with the servers now; empty when all answer."""
        found = self._runtime.llm.servers_down()
        return found + [problem for problem in self._last if problem not in found]

    async def check(self) -> list[str]:
        """Check every server once now; returns (and keeps) what is wrong."""
        errors = await self._runtime.check_servers(self.timeout_secs)
        self.checks += 1
        now = time.monotonic()
        late = {str(error) for error in errors if isinstance(error, LLMServerBusyError)}
        for message in late - self._late_since.keys():
            logger.info(f"health check: busy: {message}")
        self._late_since = {m: self._late_since.get(m, now) for m in late}
        found = [str(error) for error in errors if str(error) not in late]
        found += [
            f"{message}, late for more than {self.busy_limit_secs:g} s"
            for message, since in self._late_since.items()
            if now - since >= self.busy_limit_secs
        ]
        # One line when a problem appears and one when it clears, not one per check.
        for problem in found:
            if problem not in self._last:
                logger.warning(f"health check: {problem}")
        for problem in self._last:
            if problem not in found:
                logger.info(f"health check: cleared: {problem}")
        self._last = found
        return found

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_secs)  # the check interval, not a sync
            try:
                await self.check()
            except Exception as exc:  # a failed check must not end the checking
                logger.warning(f"health check failed: {exc!r}")
