"""LLM endpoints: an OpenAI-compatible server reached by URL, or launched and supervised.

The embedded default runs ``python -m llama_cpp.server`` with the packaged
SmolLM2 GGUF on 127.0.0.1. The Runtime starts it once for the process, waits
until it answers and stops it (by its process group) when it closes; on Linux
the server also receives SIGTERM if the voxline process dies without cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

import httpx
from loguru import logger

from voxline.engines.llm_backend import (  # noqa: F401  (re-exported: one import for callers)
    ConcurrencyCap,
    LLMBackend,
    LLMBusy,
    LLMEndpoint,
)

READY_MARKER = "Uvicorn running on"
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit")
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
# Verbose lines that would crowd the useful ones out of the error tail.
_CHATTY = ("state_write_data", "Llama.save_state", "llama_perf_context_print")


class LLMServerError(RuntimeError):
    """An LLM server could not be started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the parent process dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


async def check_endpoint(endpoint: LLMEndpoint, timeout: float = 5.0) -> None:
    """Fail clearly, naming the URL, when an OpenAI-compatible server does not answer."""
    url = endpoint.api_url + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise LLMServerError(
            f"LLM server at {endpoint.base_url} is not reachable: {exc!r}"
        ) from None
    if response.status_code != 200:
        raise LLMServerError(
            f"LLM server at {endpoint.base_url} answered {url} with HTTP {response.status_code}"
        )


async def warm_prefix(
    endpoint: LLMEndpoint,
    system_prompt: str,
    *,
    tools: list[dict] | None = None,
    timeout: float = 120.0,
) -> float:
    """Compute a persona's system prompt once on the server so calls find it cached.

    Sends a one-token request that starts with the same system message and
    offers the same tools as every call does. Returns the seconds it took (the cold prefix cost).

    Raises:
        LLMServerError: the server failed the request.
    """
    started = time.monotonic()
    body = {
        "model": endpoint.model,
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    if tools:
        body["tools"] = tools
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(endpoint.api_url + "/chat/completions", json=body)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise LLMServerError(f"warming the prompt on {endpoint.base_url} failed: {exc!r}") from None
    return time.monotonic() - started


class LlamaCppServer:
    """A supervised ``llama_cpp.server`` process serving one GGUF model.

    Args:
        model_path: the GGUF file.
        model_alias: the name clients send as ``model``.
        n_threads: CPU threads for generation (default: all cores; the library
            default of 1 is 1.7x slower per token here).
        n_ctx: context window in tokens.
        startup_timeout: seconds to wait for the server to answer.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        model_alias: str = "smollm2",
        host: str = "127.0.0.1",
        port: int | None = None,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        startup_timeout: float = 120.0,
    ):
        self.model_path = Path(model_path)
        self.model_alias = model_alias
        self.host = host
        self.port = port or free_port(host)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self.prompt_tokens_cached = 0
        self.prompt_tokens_evaluated = 0

    @property
    def endpoint(self) -> LLMEndpoint:
        """The server's URL and model name."""
        return LLMEndpoint(base_url=f"http://{self.host}:{self.port}", model=self.model_alias)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process and self._process.returncode is None else None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--n_ctx", str(self.n_ctx),
            # A new request must not end another call's reply that is still
            # streaming (the library's default does exactly that).
            "--interrupt_requests", "False",
            # The RAM prompt cache restores a persona's evaluated prefix even after
            # another persona's call used the model in between.
            "--cache", "True",
            # Verbose: the server logs how much of each prompt its cache served.
            "--verbose", "True",
        ]  # fmt: skip

    async def start(self) -> LLMEndpoint:
        """Start the server and return once it answers requests.

        Raises:
            LLMServerError: the process exited or did not answer in time; the
                message carries the server's last output lines.
        """
        started = time.monotonic()
        self._process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        logger.info(
            f"llama.cpp server pid {self._process.pid} starting on {self.endpoint.base_url}"
        )
        try:
            await asyncio.wait_for(self._wait_ready(), timeout=self.startup_timeout)
            await check_endpoint(self.endpoint)
        except (TimeoutError, LLMServerError) as exc:
            tail = "\n".join(self._tail)
            await self.stop()
            reason = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise LLMServerError(f"llama.cpp server {reason}; its last output:\n{tail}") from None
        except BaseException:
            await self.stop()
            raise
        self._drain_task = asyncio.create_task(self._drain())
        logger.info(f"llama.cpp server ready in {time.monotonic() - started:.1f} s")
        return self.endpoint

    async def _wait_ready(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                code = await self._process.wait()
                raise LLMServerError(f"exited with code {code} before it was ready")
            text = line.decode(errors="replace").rstrip()
            self._tail.append(text)
            if READY_MARKER in text:
                return

    async def _drain(self) -> None:
        """Keep reading the server's output so its pipe never fills and blocks it."""
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self._count_prompt_tokens(text)
            if not text.startswith(_CHATTY):
                self._tail.append(text)
            logger.trace(f"llama.cpp: {text}")

    def _count_prompt_tokens(self, line: str) -> None:
        if match := _PREFIX_HIT.search(line):
            self.prompt_tokens_cached += int(match.group(1))
        elif match := _PROMPT_EVAL.search(line):
            self.prompt_tokens_evaluated += int(match.group(1))

    async def prefix_counters(self) -> tuple[float, float]:
        """(queried, hit) prompt tokens: every prompt token, and those its cache served."""
        cached, evaluated = self.prompt_tokens_cached, self.prompt_tokens_evaluated
        return float(cached + evaluated), float(cached)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
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
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None
        logger.info(f"llama.cpp server pid {process.pid} stopped")
        self._process = None
