"""The stock pipecat stack the bench compares with: an LLM server and the stock bot.

The LLM server is started with voxline's own default settings for its kind
(llama.cpp: the same threads, context, batch, RAM prompt cache sized for one
persona and the bench's calls, ``--interrupt_requests False``; vLLM: the same
flags and KV cache), so the two bots differ in what sits in front of it.
The bot is :mod:`voxline.bench.stock_bot`, run as its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from pathlib import Path

import yaml

from voxline.bot.llm_servers import vllm_server
from voxline.config import ServerConfig
from voxline.engines.gguf_reencode import fast_weights
from voxline.engines.llm import LlamaCppServer, free_port, prompt_cache_bytes
from voxline.engines.server_process import SupervisedServer
from voxline.engines.vllm import kv_cache_bytes, prepare_vllm_model
from voxline.models import resolve_llm_gguf
from voxline.personas.schema import DEFAULT_LLM_MODEL

READY_MARKER = "stock bot ready"
STARTUP_TIMEOUT_SECS = 240.0


class StockStackError(RuntimeError):
    """The stock bot or its LLM server could not be started."""


class StockStack:
    """A stock pipecat Twilio bot on loopback, with an LLM server of its own.

    Args:
        persona: the persona file whose prompt, greeting, sampling and tools it uses.
        backend: ``llama_cpp`` or ``vllm``.
        max_calls: the most calls the bench places at once (sizes llama.cpp's cache).
        llm: an LLM server to start instead of one with voxline's settings.
    """

    def __init__(
        self, persona: Path, backend: str, max_calls: int, llm: SupervisedServer | None = None
    ):
        self.persona = persona
        self.backend = backend
        self.max_calls = max_calls
        self.port = free_port()
        self.llm: SupervisedServer | None = llm
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.tail: deque[str] = deque(maxlen=40)

    @property
    def url(self) -> str:
        """The bot's base URL (its voice webhook is ``/twilio/voice``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def roots(self) -> list[int]:
        """The processes whose trees make the stack: the bot and its LLM server."""
        pids = [self._process.pid if self._process else None, self.llm.pid if self.llm else None]
        return [pid for pid in pids if pid is not None]

    async def _start_llm(self, model: str) -> str:
        if self.llm is None:
            self.llm = await self._voxline_llm(model)
        self.llm.own_session = True  # a service of its own, as pipecat's users run it
        endpoint = await self.llm.start()
        return endpoint.api_url

    async def _voxline_llm(self, model: str) -> SupervisedServer:
        """An LLM server of the bench's backend with voxline's own settings."""
        gguf = resolve_llm_gguf(model)
        if self.backend == "vllm":
            # voxline's own settings, its CPU budget's threads included (docs/cpu.md).
            settings = ServerConfig().engines.vllm
            checkpoint = await prepare_vllm_model(
                model, settings.python, gguf, checkpoint_dir=settings.checkpoint_dir
            )
            # Sized as voxline sizes it for one persona and the same calls.
            kv_cache = kv_cache_bytes(checkpoint, 1 + self.max_calls, settings.max_model_len)
            return vllm_server(checkpoint, settings, model_alias=model, kv_cache=kv_cache)
        settings = ServerConfig().engines.llm
        if settings.reencode_q4_1:  # the file voxline's own llama.cpp server loads
            gguf = await fast_weights(gguf, settings.reencoded_dir)
        cache = await asyncio.to_thread(prompt_cache_bytes, gguf, 1 + self.max_calls)
        return LlamaCppServer(
            gguf, model_alias=model, n_threads=settings.n_threads, prompt_cache_bytes=cache
        )

    async def start(self) -> None:
        """Start the LLM server, then the bot; return once the bot takes calls.

        Raises:
            StockStackError: either did not start; the message has the bot's last lines.
        """
        persona = yaml.safe_load(self.persona.read_text())
        model = (persona.get("llm") or {}).get("model") or DEFAULT_LLM_MODEL
        try:
            api_url = await self._start_llm(model)
            command = [
                sys.executable, "-m", "voxline.bench.stock_bot", "--port", str(self.port),
                "--persona", str(self.persona), "--llm-url", api_url, "--llm-model", model,
            ]  # fmt: skip
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                start_new_session=True,
            )
            await asyncio.wait_for(self._wait_ready(), STARTUP_TIMEOUT_SECS)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, StockStackError):
                tail = "\n".join(self.tail)
                message = f"the stock pipecat bot did not start: {exc}\n{tail}"
                raise StockStackError(message) from exc
            raise
        self._reader = asyncio.create_task(self._drain())

    async def _wait_ready(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            if READY_MARKER in text:
                return
        code = await self._process.wait()
        tail = "\n".join(self.tail)
        raise StockStackError(f"the stock pipecat bot exited with code {code}:\n{tail}")

    async def _drain(self) -> None:
        """Read the bot's output so its pipe never fills; keep the last lines."""
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            self.tail.append(line.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        """Stop the bot's process group (SIGTERM, SIGKILL after 10 s), then the LLM server."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.llm is not None:
            await self.llm.stop()
