"""The server configuration (``voxline.yaml``): shared engine settings and capacity.

Every field has a default that runs the embedded CPU stack offline, so a missing
``voxline.yaml`` is a valid configuration. Secrets never live here: they come
from the environment.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from voxline.yamlfile import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WhisperConfig(_Strict):
    """The shared Whisper engine."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(default=1, ge=1, description="Threads inside one model run.")
    num_workers: int | None = Field(
        default=None, ge=1, description="Model runs (batches) at once. Default: one per core."
    )
    max_batch: int = Field(default=8, ge=1, description="Utterances decoded in one run.")
    max_wait_ms: float = Field(
        default=10.0, ge=0, le=1000, description="How long an utterance waits for companions."
    )
    max_queue: int = Field(
        default=64, ge=1, description="Waiting utterances beyond which new ones are refused."
    )
    min_window_secs: int = Field(
        default=15, ge=1, le=30, description="Shortest encoder window; 30 is plain Whisper."
    )


class PiperConfig(_Strict):
    """The shared Piper voices."""

    use_cuda: bool = False


class EmbeddedLLMConfig(_Strict):
    """The LLM server the Runtime launches for personas without ``llm.base_url``."""

    backend: Literal["llama_cpp", "vllm"] = Field(
        default="llama_cpp",
        description="llama_cpp (light, one request at a time) or vllm (batches calls).",
    )
    model: str = "smollm2"
    n_threads: int | None = Field(default=None, ge=1, description="Default: all cores.")
    n_ctx: int = Field(default=4096, ge=512)
    startup_timeout_secs: float = Field(default=120.0, gt=0)
    max_concurrent: int = Field(
        default=4, ge=1, description="Requests sent at once to each LLM server."
    )
    max_waiting: int = Field(
        default=32, ge=0, description="Requests waiting for a slot before new ones are refused."
    )


def _default_vllm_python() -> Path:
    # scripts/install.sh --vllm puts vLLM's environment beside voxline's (.venv).
    return Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"


class VLLMConfig(_Strict):
    """How the Runtime launches vLLM when ``engines.llm.backend`` is ``vllm``."""

    python: Path = Field(
        default_factory=_default_vllm_python, description="The vLLM environment's Python."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    max_model_len: int = Field(default=4096, ge=256)
    cpu_threads: int | None = Field(default=None, ge=1, description="Default: all cores.")
    kv_cache_gib: int = Field(default=1, ge=1, description="KV cache on a CPU, whole GiB.")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    tool_call_parser: str = "hermes"
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_secs: float = Field(default=180.0, gt=0)


class SNACConfig(_Strict):
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


class EnginesConfig(_Strict):
    """Settings of the engines shared by all calls."""

    whisper: WhisperConfig = WhisperConfig()
    piper: PiperConfig = PiperConfig()
    llm: EmbeddedLLMConfig = EmbeddedLLMConfig()
    snac: SNACConfig = SNACConfig()
    vllm: VLLMConfig = VLLMConfig()


class TwilioConfig(_Strict):
    """Phone calls through Twilio (credentials come from the environment, never from here)."""

    rest_base_url: str = Field(
        default="https://api.twilio.com",
        description="Twilio's REST root; point it at a local stand-in for tests.",
    )
    stream_token_ttl_secs: float = Field(default=60.0, gt=0, le=3600)


class WidgetConfig(_Strict):
    """One embeddable widget: which persona answers it and which sites may embed it."""

    persona: Path | None = Field(
        default=None, description="Persona file; default_persona if unset."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Pages that may start calls (scheme://host[:port]); empty = this server only.",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://shop.example.com")
        return origins


class IceServerConfig(_Strict):
    """A STUN or TURN server the browser and the server use to find a path to each other."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class WebRTCConfig(_Strict):
    """Browser calls: ICE servers and limits on the signaling endpoint."""

    ice_servers: list[IceServerConfig] = Field(default_factory=list)
    max_sdp_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    offers_per_minute_per_ip: int = Field(default=10, ge=1)


class ServerConfig(_Strict):
    """The whole ``voxline.yaml``.

    Persona paths are relative to the config file.
    """

    engines: EnginesConfig = EnginesConfig()
    max_calls: int = Field(default=4, ge=1)
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#]+$",
        description="How Twilio reaches this server: scheme and host, no path.",
    )
    default_persona: Path | None = None
    numbers: dict[str, Path] = Field(
        default_factory=dict, description="Called number (E.164) -> persona file."
    )
    twilio: TwilioConfig = TwilioConfig()
    widgets: dict[str, WidgetConfig] = Field(
        default_factory=lambda: {"demo": WidgetConfig()},
        description="Widget key -> persona and allowed origins; `demo` is the / page's.",
    )
    webrtc: WebRTCConfig = WebRTCConfig()

    @field_validator("widgets", mode="after")
    @classmethod
    def _widget_personas(cls, widgets: dict[str, WidgetConfig], info: ValidationInfo):
        base_dir = Path((info.context or {}).get("base_dir", "."))
        resolved = {}
        for key, widget in widgets.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
                raise ValueError(f"widget key {key!r}: use letters, digits, - and _ only")
            persona = widget.persona
            if persona is not None and not persona.is_absolute():
                persona = base_dir / persona
            resolved[key] = widget.model_copy(update={"persona": persona})
        return resolved

    @field_validator("default_persona", "numbers", mode="after")
    @classmethod
    def _relative_to_config(cls, value, info: ValidationInfo):
        base_dir = Path((info.context or {}).get("base_dir", "."))

        def resolve(path: Path) -> Path:
            return path if path.is_absolute() else base_dir / path

        if isinstance(value, dict):
            return {number: resolve(path) for number, path in value.items()}
        return None if value is None else resolve(value)

    def persona_paths(self) -> list[Path]:
        """Every persona file the server answers with, default first, without repeats."""
        paths = [
            self.default_persona,
            *self.numbers.values(),
            *(widget.persona for widget in self.widgets.values()),
        ]
        return list(dict.fromkeys(path for path in paths if path is not None))


def load_config(path: Path | str | None) -> ServerConfig:
    """Load ``voxline.yaml``; ``None`` (or ``$VOXLINE_CONFIG`` unset) gives the defaults.

    Raises:
        voxline.yamlfile.ConfigError: naming the file and each bad field.
    """
    path = path or os.environ.get("VOXLINE_CONFIG")
    if not path:
        return ServerConfig()
    return load_yaml_model(path, ServerConfig)
