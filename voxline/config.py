"""The server configuration (``voxline.yaml``): shared engine settings and capacity.

Every field has a default that runs the embedded CPU stack offline, so a missing
``voxline.yaml`` is a valid configuration. Secrets never live here: they come
from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voxline.yamlfile import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WhisperConfig(_Strict):
    """The shared Whisper engine."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(default=1, ge=1)
    num_workers: int = Field(default=2, ge=1)


class PiperConfig(_Strict):
    """The shared Piper voices."""

    use_cuda: bool = False


class EmbeddedLLMConfig(_Strict):
    """The llama.cpp server the Runtime launches for personas without ``llm.base_url``."""

    model: str = "smollm2"
    n_threads: int | None = Field(default=None, ge=1, description="Default: all cores.")
    n_ctx: int = Field(default=4096, ge=512)
    startup_timeout_secs: float = Field(default=120.0, gt=0)


class EnginesConfig(_Strict):
    """Settings of the engines shared by all calls."""

    whisper: WhisperConfig = WhisperConfig()
    piper: PiperConfig = PiperConfig()
    llm: EmbeddedLLMConfig = EmbeddedLLMConfig()


class ServerConfig(_Strict):
    """The whole ``voxline.yaml``."""

    engines: EnginesConfig = EnginesConfig()
    max_calls: int = Field(default=4, ge=1)


def load_config(path: Path | str | None) -> ServerConfig:
    """Load ``voxline.yaml``; ``None`` (or ``$VOXLINE_CONFIG`` unset) gives the defaults.

    Raises:
        voxline.yamlfile.ConfigError: naming the file and each bad field.
    """
    path = path or os.environ.get("VOXLINE_CONFIG")
    if not path:
        return ServerConfig()
    return load_yaml_model(path, ServerConfig)
