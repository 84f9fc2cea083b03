"""The LLM servers a process's personas talk to, launched or reached, and warmed.

A persona without ``llm.base_url`` gets the embedded server that ``engines.llm.backend``
names (llama.cpp or vLLM), launched once per model and supervised; one with a URL gets
that server, checked at start. Either way every call of every persona that shares a
server shares one :class:`~voxline.engines.llm.LLMBackend` (client and concurrency cap),
and each persona's prompt prefix (system prompt and tools) is computed once, at start
and again after a supervised server restarts, instead of by its first caller.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from loguru import logger

from voxline.bot.tool_wiring import persona_prefix
from voxline.config import ServerConfig
from voxline.engine_config import DEFAULT_MAX_CONCURRENT, VLLMConfig
from voxline.engines.gguf_reencode import fast_weights
from voxline.engines.llm import (
    LlamaCppServer,
    LLMBackend,
    LLMEndpoint,
    check_endpoint,
    prompt_cache_bytes,
    warm_prefix,
)
from voxline.engines.llm_backend import BackendKind
from voxline.engines.server_process import LLMServerError, Progress, SupervisedServer
from voxline.engines.vllm import VLLMServer, kv_cache_bytes, prepare_vllm_model
from voxline.models import ModelNotAvailableError, resolve_llm_gguf
from voxline.personas import Persona


def vllm_server(model: str, settings: VLLMConfig, *, model_alias: str, kv_cache: int) -> VLLMServer:
    """The vLLM server ``engines.vllm`` describes, for ``model`` (a checkpoint directory)
    served as ``model_alias`` with a KV cache of ``kv_cache`` bytes on a CPU."""
    return VLLMServer(
        model,
        python=settings.python,
        model_alias=model_alias,
        device=settings.device,
        max_model_len=settings.max_model_len,
        cpu_threads=settings.cpu_threads,
        kv_cache_bytes=kv_cache,
        cpu_compile=settings.cpu_compile,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tool_call_parser=settings.tool_call_parser,
        tool_strict_level=settings.tool_strict_level,
        extra_args=settings.extra_args,
        startup_timeout=settings.startup_timeout_secs,
    )


def concurrency_cap(configured: int | None, kind: BackendKind, max_calls: int) -> int:
    """Requests sent at once to one LLM server: ``engines.llm.max_concurrent`` when set.

    Unset, vLLM gets one per call: it batches them (four at once on this CPU made a token
    1.1x slower than one alone), and under a smaller cap the calls beyond it waited for the
    others' whole replies (eight calls under the old cap of four: first tokens of 0.3-0.5 s
    and of 2.8-3.4 s, docs/benchmarks.md). llama.cpp answers one request at a time, so a
    higher cap only moves its queue to the server; an external server's room is unknown.
    """
    if configured is not None:
        return configured
    return max(max_calls, DEFAULT_MAX_CONCURRENT) if kind == "vllm" else DEFAULT_MAX_CONCURRENT


class LLMServers:
    """The LLM servers (and their shared clients) of every persona this process serves.

    Args:
        config: the server configuration (``engines.llm``, ``engines.vllm``, capacity).
        progress: told, one line at a time, what a slow start is doing.
    """

    def __init__(self, config: ServerConfig, progress: Progress | None = None):
        self._config = config
        self._progress = progress
        self._servers: dict[str, SupervisedServer] = {}
        self._backends: dict[tuple[str | None, str], LLMBackend] = {}
        self._warmed: set[str] = set()
        self._personas_by_model: dict[str, dict[str, Persona]] = {}

    async def prepare(self, persona: Persona) -> None:
        """Open (once) the LLM server ``persona`` uses and warm its prompt prefix on it."""
        key = (persona.llm.base_url, persona.llm.model)
        if key not in self._backends:
            self._backends[key] = await self._open_backend(persona)
        self._backends[key].personas.add(persona.name)
        if not persona.llm.base_url:
            self._personas_by_model.setdefault(persona.llm.model, {})[persona.name] = persona
        prefix = persona_prefix(persona)
        if prefix.digest not in self._warmed:
            # A new persona, or an edited one (another prompt or tools): its prefix
            # is computed once now, not by its first caller.
            seconds = await warm_prefix(
                self._backends[key].endpoint, persona.system_prompt, tools=prefix.tools
            )
            self._warmed.add(prefix.digest)
            warmed = (
                f"persona {persona.name}: prompt prefix {prefix.digest[:12]} warmed in "
                f"{seconds:.2f} s"
            )
            logger.info(warmed)
            self._report(warmed)

    def _report(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)

    async def _open_backend(self, persona: Persona) -> LLMBackend:
        settings = self._config.engines.llm
        server: SupervisedServer | None = None
        if persona.llm.base_url:
            endpoint = LLMEndpoint(base_url=persona.llm.base_url, model=persona.llm.model)
            await check_endpoint(endpoint)
        else:
            endpoint = await self._open_endpoint(persona)
            server = self._servers[persona.llm.model]
        kind: BackendKind = "external"
        if isinstance(server, LlamaCppServer):
            kind = "llama_cpp"
        elif isinstance(server, VLLMServer):
            kind = "vllm"
        return LLMBackend(
            endpoint,
            kind=kind,
            max_concurrent=concurrency_cap(settings.max_concurrent, kind, self._config.max_calls),
            max_waiting=settings.max_waiting,
            prefix_counter=server.prefix_counters if isinstance(server, LlamaCppServer) else None,
        )

    async def _open_endpoint(self, persona: Persona) -> LLMEndpoint:
        """Launch the embedded server (llama.cpp or vLLM) for this persona's model."""
        settings = self._config.engines.llm
        server: SupervisedServer
        if settings.backend == "vllm":
            vllm = self._config.engines.vllm
            gguf = _packaged_gguf(persona.llm.model)
            model = await prepare_vllm_model(
                persona.llm.model,
                vllm.python,
                gguf,
                checkpoint_dir=vllm.checkpoint_dir,
                progress=self._progress,
            )
            conversations = len(self._config.persona_paths()) + self._config.max_calls
            kv_cache = kv_cache_bytes(
                model, conversations, vllm.max_model_len, gib=vllm.kv_cache_gib
            )
            if vllm.device == "cpu":
                sized = "set" if vllm.kv_cache_gib else f"{conversations} conversations"
                logger.info(f"vLLM KV cache {kv_cache / 2**20:.0f} MB ({sized})")
            server = vllm_server(model, vllm, model_alias=persona.llm.model, kv_cache=kv_cache)
        else:
            gguf = resolve_llm_gguf(persona.llm.model)
            if settings.reencode_q4_1:
                gguf = await fast_weights(gguf, settings.reencoded_dir, self._progress)
            cache_bytes = (
                settings.prompt_cache_mb * 2**20
                if settings.prompt_cache_mb is not None
                else await asyncio.to_thread(
                    prompt_cache_bytes,
                    gguf,
                    len(self._config.persona_paths()) + self._config.max_calls,
                )
            )
            server = LlamaCppServer(
                gguf,
                model_alias=persona.llm.model,
                n_threads=settings.n_threads,
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                prompt_cache_bytes=cache_bytes,
                startup_timeout=settings.startup_timeout_secs,
            )
        self._servers[persona.llm.model] = server
        server.on_restart = functools.partial(self._warm_again, persona.llm.model)
        return await server.start(self._progress)

    async def _warm_again(self, model: str) -> None:
        """Warm the prompt prefixes of ``model``'s personas on its restarted server."""
        server = self._servers.get(model)
        if server is None:
            return
        for persona in list(self._personas_by_model.get(model, {}).values()):
            prefix = persona_prefix(persona)
            try:
                seconds = await warm_prefix(
                    server.endpoint, persona.system_prompt, tools=prefix.tools
                )
            except LLMServerError as exc:
                logger.warning(f"persona {persona.name}: warming after the restart failed: {exc}")
            else:
                logger.info(
                    f"persona {persona.name}: prompt prefix warmed again in {seconds:.2f} s"
                )

    def servers_down(self) -> list[str]:
        """Embedded servers not answering now (dead, or restarting): no I/O, for every probe."""
        return [
            f"{server.name} for {model} is down (restarting)"
            for model, server in self._servers.items()
            if not server.up
        ]

    def backend(self, persona: Persona) -> LLMBackend:
        """The shared LLM server (client and cap) for ``persona`` (after :meth:`prepare`)."""
        return self._backends[(persona.llm.base_url, persona.llm.model)]

    def endpoint(self, persona: Persona) -> LLMEndpoint:
        """Where ``persona``'s chat completions are served (after :meth:`prepare`)."""
        return self.backend(persona).endpoint

    @property
    def backends(self) -> list[LLMBackend]:
        """Every LLM server in use, for metrics."""
        return list(self._backends.values())

    def server(self, persona: Persona) -> SupervisedServer | None:
        """The embedded LLM server launched here for ``persona``, if any."""
        return None if persona.llm.base_url else self._servers.get(persona.llm.model)

    @property
    def pids(self) -> list[int]:
        """Process ids of the LLM servers launched here that still run."""
        return [pid for server in self._servers.values() if (pid := server.pid) is not None]

    async def close(self) -> None:
        """Stop the launched servers and close every client. Safe to call twice."""
        servers, self._servers = list(self._servers.values()), {}
        # Shielded so that a second Ctrl-C during shutdown still stops the servers.
        for server in servers:
            await asyncio.shield(server.stop())
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.close()


def _packaged_gguf(model: str) -> Path | None:
    """The GGUF file behind an embedded model name, or None for a vLLM-native model."""
    try:
        return resolve_llm_gguf(model)
    except ModelNotAvailableError:
        return None
