"""A supervised model server process: started, awaited until it answers, stopped by group.

The Runtime launches OpenAI-compatible servers (llama.cpp, vLLM) as child
processes on 127.0.0.1. Each runs in its own process group, so stopping it stops
everything it started; on Linux it also receives SIGTERM if voxline dies without
cleaning up. It stays in voxline's session, so that Linux's scheduler weighs its threads
with voxline's own (see :attr:`SupervisedServer.own_session`). Its output is drained
continuously (a full pipe would block it) and the last lines are kept for error messages.

A server that exits on its own (a crash, the OOM killer, someone's ``kill``) is
restarted on the same address, after 1 s, then 2, 4, 8, 16 and at most 30 s
between attempts that fail, until one answers. Meanwhile :attr:`SupervisedServer.up`
is False (readiness reports it), requests fail at once with a connection error
(each call hears its persona's apology), and the completions that were streaming
when it died fail the same way. Once it answers again, ``on_restart`` runs (the
Runtime warms the personas' prompt prefixes again: the new process's cache is empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from loguru import logger

from voxline.engines.http_clients import async_client
from voxline.engines.llm_backend import LLMEndpoint

Progress = Callable[[str], None]
"""Receives one line of start-up progress ("vLLM server starting: 10 s"), for a person."""

PROGRESS_INTERVAL_SECS = 5.0

RESTART_BACKOFF_SECS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Waits before each restart attempt of a server that died; the last one repeats."""


class LLMServerError(RuntimeError):
    """An LLM server could not be started or reached."""


class LLMServerBusyError(LLMServerError):
    """A server took the connection but did not answer in time: busy, or hung.

    A server generating for several calls answers other requests late (llama.cpp's
    Python server runs them behind the generation), so one slow answer says less than a
    refused connection; a readiness check tells the two apart by how long it lasts.
    """


async def check_endpoint(endpoint: LLMEndpoint, timeout: float = 5.0) -> None:
    """Fail clearly, naming the URL, when an OpenAI-compatible server does not answer.

    Raises:
        LLMServerBusyError: the server accepted the connection but did not answer within
            ``timeout``.
        LLMServerError: anything else (refused, reset, not HTTP 200).
    """
    url = endpoint.api_url + "/models"
    try:
        async with async_client(timeout=timeout) as client:
            response = await client.get(url)
    except httpx.ReadTimeout:
        raise LLMServerBusyError(
            f"LLM server at {endpoint.base_url} did not answer {url} within {timeout:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise LLMServerError(
            f"LLM server at {endpoint.base_url} is not reachable: {exc!r}"
        ) from None
    if response.status_code != 200:
        raise LLMServerError(
            f"LLM server at {endpoint.base_url} answered {url} with HTTP {response.status_code}"
        )


@asynccontextmanager
async def ticking(
    progress: Progress | None, what: str, interval: float = PROGRESS_INTERVAL_SECS
) -> AsyncIterator[None]:
    """Report ``"<what>: N s"`` every ``interval`` seconds while the body runs.

    Long start-up steps (a model conversion, a server loading its model) would
    otherwise leave the terminal silent for half a minute.
    """
    if progress is None:
        yield
        return
    started = time.monotonic()

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            progress(f"{what}: {time.monotonic() - started:.0f} s")

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        ticker.cancel()
        # gather, not suppress(CancelledError): a Ctrl-C that lands while the ticker
        # winds down must still cancel the caller (suppress swallowed it: talk ran on).
        await asyncio.gather(ticker, return_exceptions=True)


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the parent process dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class SupervisedServer:
    """Base of the launchers: subclasses give the command line and the ready marker.

    Args:
        name: used in logs and errors ("llama.cpp server", "vLLM server").
        host: the address it listens on.
        port: its port.
        model_alias: the name clients send as ``model``.
        startup_timeout: seconds to wait for the server to answer.

    Attributes:
        restarts: how many times it was restarted after dying.
        on_restart: awaited after each restart, once the server answers again.
    """

    ready_marker = "Uvicorn running on"
    own_session = False
    """Start the server in a session of its own (``setsid``) instead of voxline's.

    Linux's autogroup scheduling (on by default in most distributions) shares the cores
    between sessions first and between threads only inside a session: a server in a
    session of its own gets a whole core at the peaks while voxline's event loop, Whisper
    and Piper share the other one. voxline's servers stay in its session, where every
    engine thread counts alike, as its CPU budget assumes (docs/cpu.md); the benchmarks
    start stock pipecat's LLM server apart, as its users run it.
    """
    # Lines that would crowd the useful ones out of the error tail.
    chatty_prefixes: tuple[str, ...] = ()

    def __init__(
        self, *, name: str, host: str, port: int, model_alias: str, startup_timeout: float
    ):
        self.name = name
        self.host = host
        self.port = port
        self.model_alias = model_alias
        self.startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._up = False
        self.restarts = 0
        self.on_restart: Callable[[], Awaitable[None]] | None = None
        self.restart_backoff_secs: tuple[float, ...] = RESTART_BACKOFF_SECS

    @property
    def endpoint(self) -> LLMEndpoint:
        """The server's URL and model name."""
        return LLMEndpoint(base_url=f"http://{self.host}:{self.port}", model=self.model_alias)

    @property
    def up(self) -> bool:
        """Whether the server is running and answered since it last (re)started."""
        return self._up and self.pid is not None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process and self._process.returncode is None else None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The server's environment."""
        return dict(os.environ)

    def on_output(self, line: str) -> None:
        """Called with every line the server prints (counters, for example)."""

    async def start(self, progress: Progress | None = None) -> LLMEndpoint:
        """Start the server, return once it answers requests, and watch it from then on.

        Args:
            progress: told when the process starts, every few seconds while it
                loads, and when it answers.

        Raises:
            LLMServerError: the process could not start, exited or did not answer in
                time; the message carries the server's last output lines.
        """
        endpoint = await self._launch(progress)
        self._watch_task = asyncio.create_task(self._watch())
        return endpoint

    async def _launch(self, progress: Progress | None) -> LLMEndpoint:
        """Start the process and wait until it answers (see :meth:`start`)."""
        started = time.monotonic()
        command = self.command()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(),
                # A group of its own either way: stop() ends everything it started.
                start_new_session=self.own_session,
                process_group=None if self.own_session else 0,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise LLMServerError(f"{self.name} could not start ({command[0]}): {exc}") from None
        starting = f"{self.name} pid {self._process.pid} starting on {self.endpoint.base_url}"
        logger.info(starting)
        if progress is not None:
            progress(starting)
        try:
            async with ticking(progress, f"{self.name} starting"):
                await asyncio.wait_for(self._wait_ready(), timeout=self.startup_timeout)
                await check_endpoint(self.endpoint)
        except (TimeoutError, LLMServerError) as exc:
            tail = "\n".join(self._tail)
            await self._end_process()
            reason = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise LLMServerError(f"{self.name} {reason}; its last output:\n{tail}") from None
        except BaseException:
            await self._end_process()
            raise
        self._drain_task = asyncio.create_task(self._drain())
        self._up = True
        ready = f"{self.name} ready in {time.monotonic() - started:.1f} s"
        logger.info(ready)
        if progress is not None:
            progress(ready)
        return self.endpoint

    def _keep(self, line: bytes) -> str:
        text = line.decode(errors="replace").rstrip()
        self.on_output(text)
        if not text.startswith(self.chatty_prefixes):
            self._tail.append(text)
        return text

    async def _wait_ready(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                code = await self._process.wait()
                raise LLMServerError(f"exited with code {code} before it was ready")
            if self.ready_marker in self._keep(line):
                return

    async def _drain(self) -> None:
        """Keep reading the server's output so its pipe never fills and blocks it."""
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            logger.trace(f"{self.name}: {self._keep(line)}")

    async def _watch(self) -> None:
        """Restart the server, with backoff, each time it exits without being stopped."""
        while True:
            process = self._process
            if process is None:
                return
            code = await process.wait()
            self._up = False
            tail = "\n".join(list(self._tail)[-5:])
            logger.error(
                f"{self.name} pid {process.pid} exited with code {code}; restarting it. "
                f"Its last output:\n{tail}"
            )
            await self._end_process()
            attempt = 0
            while True:
                wait = self.restart_backoff_secs[min(attempt, len(self.restart_backoff_secs) - 1)]
                await asyncio.sleep(wait)  # backoff: a server that cannot start is not hammered
                try:
                    await self._launch(None)
                except LLMServerError as exc:
                    attempt += 1
                    logger.error(f"{self.name} restart {attempt} failed: {exc}")
                    continue
                break
            self.restarts += 1
            logger.warning(f"{self.name} restarted (restart {self.restarts}), pid {self.pid}")
            if self.on_restart is not None:
                try:
                    await self.on_restart()
                except Exception as exc:  # warming again only saves latency
                    logger.warning(f"{self.name}: after the restart: {exc!r}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop watching the server, then stop its process group: SIGTERM, then SIGKILL
        after ``grace`` seconds."""
        watch, self._watch_task = self._watch_task, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await self._end_process(grace)

    async def _end_process(self, grace: float = 5.0) -> None:
        """End the process group (whatever is left of it) and its output reader."""
        self._up = False
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        else:
            # The server died: children it left (vLLM's engine core) go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._drain_task is not None:
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
            self._drain_task = None
        logger.info(f"{self.name} pid {process.pid} stopped")
        self._process = None
