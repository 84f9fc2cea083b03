"""LLM endpoints: an OpenAI-compatible server reached by URL, or launched and supervised.

The embedded default runs ``python -m llama_cpp.server`` with the packaged
SmolLM2 GGUF on 127.0.0.1. The Runtime starts it once for the process, waits
until it answers and stops it (by its process group) when it closes; on Linux
the server also receives SIGTERM if the voxline process dies without cleaning up.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from voxline.cpu_budget import available_cores
from voxline.engines.gguf_info import GGUFError, kv_bytes_per_token
from voxline.engines.http_clients import async_client
from voxline.engines.llm_backend import (  # noqa: F401  (re-exported: one import for callers)
    ConcurrencyCap,
    LLMBackend,
    LLMBusy,
    LLMEndpoint,
)
from voxline.engines.server_process import (  # noqa: F401  (check_endpoint re-exported)
    LLMServerError,
    SupervisedServer,
    check_endpoint,
)

_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit")
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
_GENERATED = re.compile(r"\beval time =\s*[\d.]+ ms /\s*(\d+) runs")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
        async with async_client(timeout=timeout) as client:
            response = await client.post(endpoint.api_url + "/chat/completions", json=body)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise LLMServerError(f"warming the prompt on {endpoint.base_url} failed: {exc!r}") from None
    return time.monotonic() - started


PROMPT_CACHE_TOKENS = 1024
"""Tokens of conversation the llama.cpp prompt cache keeps room for, per persona and per call."""


def prompt_cache_bytes(model_path: Path, conversations: int) -> int:
    """A llama.cpp RAM prompt cache with room for ``conversations`` prompts of
    :data:`PROMPT_CACHE_TOKENS` tokens (one per persona prefix, one per live call).

    The library's default, 2 GiB of KV states, grew the server past 1.7 GB for a
    135 M model: every completion is cached, and beside each state the library keeps
    a copy of the batch's logits that its size limit does not count.
    """
    try:
        per_token = kv_bytes_per_token(model_path)
    except (OSError, GGUFError) as exc:
        raise LLMServerError(f"cannot size the prompt cache: {exc}") from None
    return max(1, conversations) * PROMPT_CACHE_TOKENS * per_token


class LlamaCppServer(SupervisedServer):
    """A supervised ``llama_cpp.server`` process serving one GGUF model.

    Args:
        model_path: the GGUF file.
        model_alias: the name clients send as ``model``.
        n_threads: CPU threads for generation (default: all cores; the library
            default of 1 is 1.7x slower per token here).
        n_ctx: context window in tokens.
        n_batch: prompt tokens per evaluation batch; each cached prompt also keeps
            ``n_batch`` x vocabulary logits, so it is small by default.
        prompt_cache_bytes: capacity of the RAM prompt cache (KV states), see
            :func:`prompt_cache_bytes`; None: the library's 2 GiB.
        startup_timeout: seconds to wait for the server to answer.
    """

    chatty_prefixes = ("state_write_data", "Llama.save_state", "llama_perf_context_print")

    def __init__(
        self,
        model_path: Path,
        *,
        model_alias: str = "smollm2",
        host: str = "127.0.0.1",
        port: int | None = None,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        n_batch: int = 64,
        prompt_cache_bytes: int | None = None,
        startup_timeout: float = 120.0,
    ):
        super().__init__(
            name="llama.cpp server",
            host=host,
            port=port or free_port(host),
            model_alias=model_alias,
            startup_timeout=startup_timeout,
        )
        self.model_path = Path(model_path)
        self.n_threads = n_threads or available_cores()
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.prompt_cache_bytes = prompt_cache_bytes
        self.prompt_tokens_cached = 0
        self.prompt_tokens_evaluated = 0
        self.tokens_generated = 0
        self.prompt_evaluations: deque[int] = deque(maxlen=256)
        """Prompt tokens each recent request evaluated beyond what the cache served."""

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
            *(["--cache_size", str(self.prompt_cache_bytes)] if self.prompt_cache_bytes else []),
            # The library's server keeps every prompt token's logits by default:
            # 200 KB per token that each cached prompt copies and each restore
            # scans (0.3-0.8 s per request at 500 tokens). Replies need only the last.
            "--logits_all", "False",
            "--n_batch", str(self.n_batch),
            "--n_ubatch", str(self.n_batch),
            # Verbose: the server logs how much of each prompt its cache served.
            "--verbose", "True",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        """The server's environment: large buffers go straight back to the system.

        Each cached prompt keeps megabytes of arrays; with glibc's adaptive threshold
        they come from heaps the server's threads fragment. Four waves of four
        concurrent five-turn calls with the bank persona's tools: 2.32 GB with this,
        2.50 GB without (the server holds ~2.3 GB there either way; see docs/llm.md).
        """
        return {**super().environment(), "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}

    def on_output(self, line: str) -> None:
        """Count the prompt tokens the cache served and those evaluated."""
        if match := _PREFIX_HIT.search(line):
            self.prompt_tokens_cached += int(match.group(1))
        elif match := _PROMPT_EVAL.search(line):
            self.prompt_tokens_evaluated += int(match.group(1))
            self.prompt_evaluations.append(int(match.group(1)))
        elif match := _GENERATED.search(line):
            self.tokens_generated += int(match.group(1))

    async def prefix_counters(self) -> tuple[float, float]:
        """(queried, hit) prompt tokens: every prompt token, and those its cache served."""
        cached, evaluated = self.prompt_tokens_cached, self.prompt_tokens_evaluated
        return float(cached + evaluated), float(cached)
