"""The vLLM backend: the real vLLM OpenAI server, launched and supervised by the Runtime.

vLLM batches concurrent requests (continuous batching) and caches prompt prefixes
across them: the production backend on a GPU, and on a CPU the better choice as
soon as several calls share the machine (4 calls: 2.0 s vs 8.2 s with llama.cpp,
docs/vllm.md). It runs in its own virtual environment (``.venv-vllm``, made by
``scripts/install.sh``) so that its pins (torch, transformers) never fight
voxline's. The packaged SmolLM2 GGUF is dequantized once into a safetensors
checkpoint vLLM can load (:func:`prepare_vllm_model`), kept and reused by every
later start. No pipecat imports here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

from voxline.cpu_budget import available_cores
from voxline.engines.gguf_info import kv_bytes
from voxline.engines.llm import free_port
from voxline.engines.server_process import LLMServerError, Progress, SupervisedServer, ticking

CONVERTER = Path(__file__).with_name("vllm_convert.py")
DEFAULT_CHECKPOINT_DIR = Path.home() / ".cache" / "voxline" / "vllm"
INSTALL_COMMAND = "bash scripts/install.sh"
DEFAULT_KV_CACHE_BYTES = 2**30
"""The CPU KV cache of a model whose size cannot be read from its checkpoint."""
CONVERSATION_TOKENS = 2048
"""Tokens of KV cache kept per conversation: a persona's prompt with its tools (~500-800
tokens for the packaged personas) or a live call's own part (its facts and turns)."""
# Finds the package without importing it: vLLM's import takes seconds, this a few ms.
_FIND_VLLM = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"


async def vllm_missing(python: Path, timeout: float = 60.0) -> str | None:
    """Why vLLM cannot run from ``python``, or None when that Python has it.

    Checked before anything is loaded, so that ``voxline serve`` without vLLM
    stops at once with one line instead of after loading its other engines.

    Args:
        python: the vLLM environment's Python (``engines.vllm.python``).
        timeout: seconds the check may take.

    Returns:
        ``"<python> does not exist"``, ``"<python> cannot import vllm"`` or why it
        does not run; None when ``import vllm`` would find the package.
    """
    if not python.is_file():
        return f"{python} does not exist"
    try:
        process = await asyncio.create_subprocess_exec(
            str(python), "-c", _FIND_VLLM,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        return f"{python} does not run ({exc.strerror or exc})"
    try:
        _, error = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return f"{python} did not answer within {timeout:.0f} s"
    if process.returncode == 3:
        return f"{python} cannot import vllm"
    if process.returncode != 0:
        last = (error.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return f"{python} does not run (exit {process.returncode}: {last})"
    return None


class VLLMServer(SupervisedServer):
    """A supervised ``vllm.entrypoints.openai.api_server`` process.

    Args:
        model: a model directory or Hugging Face name vLLM can load.
        python: the vLLM virtual environment's Python.
        model_alias: the name clients send as ``model``.
        device: ``cpu`` or ``cuda``.
        max_model_len: context window in tokens.
        cpu_threads: OpenMP threads on a CPU (default: all cores).
        kv_cache_bytes: KV cache size on a CPU (:func:`kv_cache_bytes`); a GPU sizes it
            from ``gpu_memory_utilization``.
        cpu_compile: on a CPU, let vLLM compile the model (torch.compile) instead of
            running it eagerly (``--enforce-eager``): faster tokens, a start-up several
            times longer and more memory (``benchmarks/vllm_tokens.py``, docs/vllm.md).
            A GPU always compiles.
        gpu_memory_utilization: share of GPU memory vLLM may take.
        tool_call_parser: how tool calls are parsed from the model's output.
        tool_strict_level: vLLM's ``--tool-strict-level``: ``parameter`` (the default)
            makes every tool call's arguments follow the tool's JSON schema (a small
            model otherwise writes a bare string or leaves out required fields),
            ``function`` constrains only the call's markup and name, ``auto`` leaves
            it to each tool's ``strict`` flag (and is the only level a vLLM older
            than 0.32 knows: the flag is then left out).
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
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        cpu_compile: bool = False,
        gpu_memory_utilization: float = 0.85,
        tool_call_parser: str = "hermes",
        tool_strict_level: str = "parameter",
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
        self.cpu_threads = cpu_threads or available_cores()
        self.kv_cache_bytes = kv_cache_bytes
        self.cpu_compile = cpu_compile
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tool_call_parser = tool_call_parser
        self.tool_strict_level = tool_strict_level
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
        if self.tool_strict_level != "auto":  # vLLM before 0.32 has no such flag
            command += ["--tool-strict-level", self.tool_strict_level]
        if self.device == "cpu":
            if not self.cpu_compile:  # eager start-up takes ~17 s, compiled ~70-80 s
                command.append("--enforce-eager")
            command += ["--dtype", "bfloat16"]
            command += ["--kv-cache-memory-bytes", str(self.kv_cache_bytes)]
            if "--distributed-executor-backend" not in self.extra_args:
                command += ["--distributed-executor-backend", "uni"]
        else:
            command += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        return command + self.extra_args

    @property
    def _cpu_executor(self) -> str:
        """vLLM's executor on a CPU: the one ``extra_args`` names, else "uni".

        "uni" runs the model inside the engine process. vLLM's default on a CPU, "mp",
        runs it in a worker process of its own, and the engine process busy-waits on
        the worker's shared-memory queue (~95 % of a core while tokens are made, and
        the idle worker ~50 % of one), CPU the other engines of a small machine need
        (``benchmarks/vllm_cpu_use.py``, docs/cpu.md); "uni" is as fast.
        """
        args = self.extra_args
        if "--distributed-executor-backend" in args:
            at = args.index("--distributed-executor-backend") + 1
            return args[at] if at < len(args) else ""
        return "uni"

    def environment(self) -> dict[str, str]:
        """CPU threads for vLLM's CPU backend; offline hub access."""
        env = dict(os.environ)
        if self.device == "cpu":
            # vLLM's whole-GiB setting would override --kv-cache-memory-bytes.
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)
            env.update(
                {
                    "VLLM_CPU_OMP_THREADS_BIND": f"0-{self.cpu_threads - 1}",
                    "OMP_NUM_THREADS": str(self.cpu_threads),
                }
            )
            if self._cpu_executor == "uni":
                # Lets the CPU platform keep the "uni" executor (it turns it into "mp").
                env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if Path(self.model).is_dir():
            env["HF_HUB_OFFLINE"] = "1"  # a local checkpoint needs no hub
        return env

    async def start(self, progress: Progress | None = None):
        """Start the server (see :meth:`SupervisedServer.start`).

        Raises:
            LLMServerError: also when the vLLM environment is missing.
        """
        if not self.python.is_file():
            raise LLMServerError(
                f"vLLM's Python {self.python} does not exist: install vLLM with "
                f"`{INSTALL_COMMAND}` or set engines.vllm.python"
            )
        return await super().start(progress)


def checkpoint_path(model: str, gguf: Path, checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR) -> Path:
    """Where the converted checkpoint of ``gguf`` lives: one per model name and file size.

    A model named by its path (``/models/house.gguf``) gets a folder named after the
    file and a digest of its full path, inside ``checkpoint_dir`` like every other:
    the path itself would put the checkpoint beside the GGUF file.
    """
    size = gguf.stat().st_size
    if "/" not in model and os.sep not in model:
        return checkpoint_dir / f"{model}-{size}"
    digest = hashlib.sha256(str(Path(model).expanduser().resolve()).encode()).hexdigest()[:12]
    return checkpoint_dir / f"{Path(model).stem}-{digest}-{size}"


async def prepare_vllm_model(
    model: str,
    python: Path,
    gguf: Path | None = None,
    *,
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR,
    progress: Progress | None = None,
) -> str:
    """What to give vLLM as ``--model``: a directory or hub name as is, a GGUF converted.

    A GGUF is converted once (~20 s for SmolLM2-135M on 2 cores) into
    ``checkpoint_dir``; every later start finds the checkpoint there and reuses it.

    Args:
        model: the persona's model name (a directory, a hub name, or a packaged GGUF name).
        python: the vLLM environment's Python, which runs the conversion.
        gguf: the packaged GGUF file for ``model``, when it is one.
        checkpoint_dir: where converted checkpoints are kept (``engines.vllm.checkpoint_dir``).
        progress: told whether the checkpoint is reused or converted, and how long it took.

    Raises:
        LLMServerError: the conversion failed (its output is in the message).
    """
    if gguf is None:
        return model
    report = progress or (lambda _line: None)
    target = checkpoint_path(model, gguf, checkpoint_dir)
    if (target / "config.json").is_file():
        report(f"vLLM checkpoint of {model}: reusing {target}")
        return str(target)
    report(f"converting {gguf.name} for vLLM into {target} (once; ~20 s on 2 cores)")
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            str(python), str(CONVERTER), str(gguf), str(target),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
    except OSError as exc:
        raise LLMServerError(f"converting {gguf.name} for vLLM: {python}: {exc}") from None
    try:
        async with ticking(progress, f"converting {model} for vLLM"):
            output, _ = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.terminate()  # the converter removes its staging folder and exits
            await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        tail = "\n".join(output.decode(errors="replace").splitlines()[-15:])
        raise LLMServerError(f"converting {gguf.name} for vLLM failed:\n{tail}")
    report(f"converted {model} for vLLM in {time.monotonic() - started:.1f} s")
    return str(target)


def kv_cache_bytes(
    model: str, conversations: int, max_model_len: int, *, gib: float | None = None
) -> int:
    """The CPU KV cache for ``model``: ``gib`` when set, else room for ``conversations``
    of :data:`CONVERSATION_TOKENS` tokens (one per persona prefix, one per live call),
    never less than one request of ``max_model_len`` tokens (vLLM refuses to start
    without it).

    vLLM fills the whole cache with zeros at start: the fixed 1 GiB it was given before
    held 46 000 tokens of SmolLM2-135M, and its engine process's RSS fell from 2.16 to
    1.39 GB with 256 MiB. The cache is in bfloat16, as :class:`VLLMServer` runs a model on
    a CPU. Too small a cache costs latency under load (vLLM pauses and recomputes
    requests), never a failed reply. A model that is no local checkpoint with a
    ``config.json`` naming its layers and heads (a hub name) gets
    :data:`DEFAULT_KV_CACHE_BYTES`.
    """
    if gib is not None:
        return int(gib * 2**30)
    config_path = Path(model) / "config.json"
    try:
        config = json.loads(config_path.read_text())
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_KV_CACHE_BYTES
    tokens = max(max_model_len, max(1, conversations) * CONVERSATION_TOKENS)
    return tokens * kv_bytes(layers, kv_heads, head_dim)  # bfloat16
