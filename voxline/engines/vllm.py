"""The vLLM backend: the real vLLM OpenAI server, launched and supervised by the Runtime.

vLLM batches concurrent requests (continuous batching) and caches prompt prefixes
across them: the production backend on a GPU, and on a CPU the better choice as
soon as several calls share the machine (4 calls: 2.0 s vs 8.2 s with llama.cpp,
docs/vllm.md). It runs in its own virtual environment (``.venv-vllm``, made by
``scripts/install.sh --vllm``) so that its pins (torch, transformers) never fight
voxline's. The packaged SmolLM2 GGUF is dequantized once into a safetensors
checkpoint vLLM can load (:func:`prepare_vllm_model`). No pipecat imports here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from voxline.engines.llm import free_port
from voxline.engines.server_process import LLMServerError, SupervisedServer

CONVERTER = Path(__file__).with_name("vllm_convert.py")
CACHE_DIR = Path.home() / ".cache" / "voxline" / "vllm"


class VLLMServer(SupervisedServer):
    """A supervised ``vllm.entrypoints.openai.api_server`` process.

    Args:
        model: a model directory or Hugging Face name vLLM can load.
        python: the vLLM virtual environment's Python.
        model_alias: the name clients send as ``model``.
        device: ``cpu`` or ``cuda``.
        max_model_len: context window in tokens.
        cpu_threads: OpenMP threads on a CPU (default: all cores).
        kv_cache_gib: KV cache size on a CPU, whole GiB.
        gpu_memory_utilization: share of GPU memory vLLM may take.
        tool_call_parser: how tool calls are parsed from the model's output.
        extra_args: more command-line flags, passed as given.
        startup_timeout: seconds to wait for the server to answer.
    """

    ready_marker = "Application startup complete"
    chatty_prefixes = ("(APIServer", "INFO:     127.0.0.1")

    def __init__(
        self,
        model: str,
        *,
        python: Path,
        model_alias: str = "smollm2",
        host: str = "127.0.0.1",
        port: int | None = None,
        device: str = "cpu",
        max_model_len: int = 4096,
        cpu_threads: int | None = None,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.85,
        tool_call_parser: str = "hermes",
        extra_args: list[str] | None = None,
        startup_timeout: float = 180.0,
    ):
        super().__init__(
            name="vLLM server",
            host=host,
            port=port or free_port(host),
            model_alias=model_alias,
            startup_timeout=startup_timeout,
        )
        self.model = model
        self.python = Path(python)
        self.device = device
        self.max_model_len = max_model_len
        self.cpu_threads = cpu_threads or os.cpu_count() or 1
        self.kv_cache_gib = kv_cache_gib
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tool_call_parser = tool_call_parser
        self.extra_args = list(extra_args or [])

    def command(self) -> list[str]:
        """The command line that starts the server."""
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            # Every call of a persona starts with the same prompt: cache it.
            "--enable-prefix-caching",
            "--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser,
        ]  # fmt: skip
        if self.device == "cpu":
            # CUDA graphs do not exist on a CPU; eager start-up takes 20 s, not 80.
            command += ["--enforce-eager", "--dtype", "bfloat16"]
        else:
            command += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        return command + self.extra_args

    def environment(self) -> dict[str, str]:
        """CPU threads and KV cache size for vLLM's CPU backend; offline hub access."""
        env = dict(os.environ)
        if self.device == "cpu":
            env.update(
                {
                    "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                    "VLLM_CPU_OMP_THREADS_BIND": f"0-{self.cpu_threads - 1}",
                    "OMP_NUM_THREADS": str(self.cpu_threads),
                }
            )
        if Path(self.model).is_dir():
            env["HF_HUB_OFFLINE"] = "1"  # a local checkpoint needs no hub
        return env

    async def start(self):
        """Start the server (see :meth:`SupervisedServer.start`).

        Raises:
            LLMServerError: also when the vLLM environment is missing.
        """
        if not self.python.is_file():
            raise LLMServerError(
                f"vLLM's Python {self.python} does not exist: install vLLM with "
                "`bash scripts/install.sh --vllm` or set engines.vllm.python"
            )
        return await super().start()


async def prepare_vllm_model(model: str, python: Path, gguf: Path | None = None) -> str:
    """What to give vLLM as ``--model``: a directory or hub name as is, a GGUF converted.

    Args:
        model: the persona's model name (a directory, a hub name, or a packaged GGUF name).
        python: the vLLM environment's Python, which runs the conversion.
        gguf: the packaged GGUF file for ``model``, when it is one.

    Raises:
        LLMServerError: the conversion failed (its output is in the message).
    """
    if gguf is None:
        return model
    target = CACHE_DIR / f"{model}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return str(target)
    process = await asyncio.create_subprocess_exec(
        str(python), str(CONVERTER), str(gguf), str(target),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    output, _ = await process.communicate()
    if process.returncode != 0:
        tail = "\n".join(output.decode(errors="replace").splitlines()[-15:])
        raise LLMServerError(f"converting {gguf.name} for vLLM failed:\n{tail}")
    return str(target)
