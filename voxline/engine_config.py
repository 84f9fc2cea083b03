"""The ``engines:`` section of ``voxline.yaml``: the models shared by all calls.

Whisper, Piper, the embedded LLM server (llama.cpp or vLLM) and SNAC, with thread and
worker counts that default to the CPU budget (:mod:`voxline.cpu_budget`, docs/cpu.md).
:mod:`voxline.config` holds the rest of the file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from voxline.cpu_budget import CpuBudget, cpu_budget
from voxline.engines.gguf_reencode import DEFAULT_REENCODED_DIR
from voxline.engines.piper import DEFAULT_BUSY_FIRST_PHONEMES, DEFAULT_MAX_PHONEMES
from voxline.engines.vllm import DEFAULT_CHECKPOINT_DIR
from voxline.personas.schema import DEFAULT_LLM_MODEL
from voxline.yamlfile import StrictModel

HomePath = Annotated[Path, AfterValidator(Path.expanduser)]
"""A path in voxline.yaml, where ``~`` is the user's home."""


DEFAULT_MAX_CONCURRENT = 4
"""Requests sent at once to a llama.cpp or external LLM server when ``max_concurrent`` is
unset (llama.cpp answers one at a time: a higher cap only moves the queue to the server)."""


class WhisperConfig(StrictModel):
    """The shared Whisper engine."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    cpu_threads: int | None = Field(
        default=None, ge=1, description="Threads inside one model run. Default: CPU budget (1)."
    )
    num_workers: int | None = Field(
        default=None, ge=1, description="Model runs (batches) at once. Default: CPU budget."
    )
    max_batch: int = Field(default=8, ge=1, description="Utterances decoded in one run.")
    max_wait_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="How long an utterance waits for companions. Default: 0 on a CPU (a "
        "batch costs the sum of its utterances there), 10 on a GPU.",
    )
    max_queue: int = Field(
        default=64, ge=1, description="Waiting utterances beyond which new ones are refused."
    )
    min_window_secs: int = Field(
        default=10, ge=1, le=30, description="Shortest encoder window; 30 is plain Whisper."
    )
    share_queue: bool | None = Field(
        default=None,
        description="Share queued utterances among the workers instead of one worker taking "
        "them all. Default: on when the model runs on a CPU.",
    )


class PiperConfig(StrictModel):
    """The shared Piper voices."""

    use_cuda: bool = False
    workers: int | None = Field(
        default=None, ge=1, description="Syntheses at once (one is kept for first chunks)."
    )
    threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime threads per synthesis. Default: 1."
    )
    max_queue: int = Field(
        default=64, ge=1, description="Waiting syntheses beyond which new ones are refused."
    )
    max_phonemes: int | None = Field(
        default=DEFAULT_MAX_PHONEMES,
        ge=8,
        description="Longer sentences are cut at a clause or word; null keeps them whole.",
    )
    busy_first_phonemes: int | None = Field(
        default=DEFAULT_BUSY_FIRST_PHONEMES,
        ge=8,
        description="When other syntheses wait, a reply's first words (at most this many "
        "phonemes, e.g. 16) are voiced alone and the rest of its first chunk next; "
        "null (the default): whole.",
    )
    # Eight-call bursts, six runs each way (docs/benchmarks.md, "Eight callers: the worker
    # kept for first chunks lent"): 11 underruns never lent, 5 with 500 ms.
    urgent_ms: float | None = Field(
        default=500,
        ge=0,
        le=10_000,
        description="A later sentence whose caller runs out of audio within this time (and "
        "has not yet) may use the worker kept for first chunks; null: never.",
    )
    urgent_before_first: bool = Field(
        default=True,
        description="A later sentence whose caller runs out of audio within urgent_ms (or "
        "has already) goes before the replies' first chunks waiting.",
    )


LLMBackendName = Literal["llama_cpp", "vllm"]
Command = Literal["serve", "talk"]

COMMAND_LLM_BACKENDS: dict[Command, LLMBackendName] = {"serve": "vllm", "talk": "llama_cpp"}
"""The embedded LLM each command runs when ``engines.llm.backend`` is unset: ``serve``
batches many calls on vLLM; ``talk`` (one call) starts llama.cpp in a second."""


class EmbeddedLLMConfig(StrictModel):
    """The LLM server the Runtime launches for personas without ``llm.base_url``."""

    backend: LLMBackendName | None = Field(
        default=None,
        description=(
            "llama_cpp (starts in 1 s, 0.8 GB, one request at a time) or vllm (starts in "
            "~20 s, ~3.2 GB, batches calls). Unset: vllm for serve, llama_cpp for talk."
        ),
    )
    fallback_to_llama_cpp: bool = Field(
        default=False,
        description=(
            "When the backend is vllm and vLLM is not installed, run llama.cpp instead of "
            "refusing to start."
        ),
    )
    model: str = Field(
        default=DEFAULT_LLM_MODEL,
        min_length=1,
        description="The LLM of every persona that names no llm.model: an embedded GGUF "
        "name or path (llama.cpp; converted once for vLLM), or a served model's name.",
    )
    n_threads: int | None = Field(default=None, ge=1, description="Default: CPU budget.")
    n_ctx: int = Field(default=4096, ge=512)
    n_batch: int = Field(
        default=64,
        ge=8,
        description="llama.cpp's prompt batch; every cached prompt keeps n_batch x vocabulary "
        "logits beside it (12.6 MB at 64, 100 MB at the library's 512 for SmolLM2).",
    )
    prompt_cache_mb: int | None = Field(
        default=None,
        ge=1,
        description="llama.cpp's RAM prompt cache. Default: sized from the personas and "
        "max_calls (docs/llm.md).",
    )
    reencode_q4_1: bool = Field(
        default=True,
        description="Load a Q4_1 GGUF (the packaged SmolLM2) as a Q8_0 copy made once: "
        "27 % faster prompts and 20 % faster tokens on a CPU, the same model within "
        "rounding (docs/llm.md); false: load the file as it is.",
    )
    reencoded_dir: HomePath = Field(
        default=DEFAULT_REENCODED_DIR,
        description="Where the Q8_0 copies of Q4_1 models are kept and reused.",
    )
    startup_timeout_secs: float = Field(default=120.0, gt=0)
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description="Requests sent at once to each LLM server. Default: max_calls for vLLM, "
        "which batches them, so that no call waits for another call's whole reply; "
        f"{DEFAULT_MAX_CONCURRENT} for llama.cpp (one request at a time) and external "
        "servers (docs/llm.md).",
    )
    max_waiting: int = Field(
        default=32, ge=0, description="Requests waiting for a slot before new ones are refused."
    )


def _default_vllm_python() -> Path:
    # scripts/install.sh puts vLLM's environment beside voxline's (.venv).
    return Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"


class VLLMConfig(StrictModel):
    """How the Runtime launches vLLM when ``engines.llm.backend`` is ``vllm``."""

    python: HomePath = Field(
        default_factory=_default_vllm_python, description="The vLLM environment's Python."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    max_model_len: int = Field(default=4096, ge=256)
    cpu_threads: int | None = Field(default=None, ge=1, description="Default: CPU budget.")
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="KV cache on a CPU, GiB. Default: sized for the personas and max_calls "
        "(2048 tokens each), at least one max_model_len request.",
    )
    cpu_compile: bool = Field(
        default=False,
        description="torch.compile the model on a CPU instead of running it eagerly "
        "(docs/vllm.md: faster tokens, slower start, more memory; a GPU always compiles).",
    )
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    tool_call_parser: str = "hermes"
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        default="parameter",
        description="parameter: tool arguments are decoded to follow each tool's JSON "
        "schema; function: only the call's markup and name; auto: each tool's `strict`.",
    )
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_secs: float = Field(default=180.0, gt=0)
    checkpoint_dir: HomePath = Field(
        default=DEFAULT_CHECKPOINT_DIR,
        description="Where packaged GGUF models converted for vLLM are kept and reused.",
    )


class SNACConfig(StrictModel):
    """The shared SNAC decoder behind Orpheus voices."""

    model: str = Field(
        default="hubertsiuzdak/snac_24khz",
        description="Hugging Face name or local directory; random:SEED for tests (not speech).",
    )
    device: Literal["cpu", "cuda"] = "cpu"
    max_batch: int = Field(
        default=8, ge=1, description="Windows per run; 8 on CPU (16 loses here), 32+ on a GPU."
    )
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    max_queue: int = Field(default=256, ge=1)


class EnginesConfig(StrictModel):
    """Settings of the engines shared by all calls.

    Thread and worker counts left unset are filled in from the CPU budget
    (:func:`voxline.cpu_budget.cpu_budget`, docs/cpu.md) once the file is read, so
    every engine finds a number here; a value set in ``voxline.yaml`` wins.
    """

    cpu_cores: int | None = Field(
        default=None,
        ge=1,
        description="Cores the engines share. Default: the cores this process may use "
        "(its CPU affinity, capped by its container's CPU limit).",
    )
    remember_lines: bool = Field(
        default=True,
        description="Keep each voice's audio of the personas' greetings and phrases, once a "
        "call has spoken one whole, and play it from memory on every later call.",
    )
    whisper: WhisperConfig = WhisperConfig()
    piper: PiperConfig = PiperConfig()
    llm: EmbeddedLLMConfig = EmbeddedLLMConfig()
    snac: SNACConfig = SNACConfig()
    vllm: VLLMConfig = VLLMConfig()

    @property
    def budget(self) -> CpuBudget:
        """The CPU budget the unset counts were taken from."""
        return cpu_budget(self.cpu_cores, whisper_on_gpu=self.whisper.device == "cuda")

    @model_validator(mode="after")
    def _apply_cpu_budget(self) -> EnginesConfig:
        budget = self.budget

        def fill(section: BaseModel, **defaults: int) -> BaseModel:
            unset = {key: value for key, value in defaults.items() if getattr(section, key) is None}
            return section.model_copy(update=unset) if unset else section

        updates = {
            "whisper": fill(
                self.whisper,
                cpu_threads=budget.whisper_threads,
                num_workers=budget.whisper_workers,
            ),
            "piper": fill(self.piper, workers=budget.piper_workers, threads=budget.piper_threads),
            "llm": fill(self.llm, n_threads=budget.llm_threads),
            "vllm": fill(self.vllm, cpu_threads=budget.llm_threads),
        }
        for name, section in updates.items():
            object.__setattr__(self, name, section)  # frozen model, still being built
        return self
