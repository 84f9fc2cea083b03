"""A Q4_1 GGUF is loaded by llama.cpp as a Q8_0 copy made once (engines/gguf_reencode.py)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from voxline.engines.gguf_info import gguf_numbers
from voxline.engines.gguf_reencode import (
    FILE_TYPE_Q4_1,
    FILE_TYPE_Q8_0,
    fast_weights,
    needs_reencoding,
    reencoded_path,
)
from voxline.engines.server_process import LLMServerError
from voxline.models import resolve_llm_gguf


@pytest.fixture(scope="module")
def packaged() -> Path:
    path = resolve_llm_gguf("smollm2")
    assert gguf_numbers(path)["general.file_type"] == FILE_TYPE_Q4_1
    return path


def test_a_q4_1_model_is_copied_as_q8_0_once_and_reused(packaged: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    lines: list[str] = []
    copy = asyncio.run(fast_weights(packaged, cache, lines.append))
    assert copy == reencoded_path(packaged, cache) and copy.parent == cache
    assert gguf_numbers(copy)["general.file_type"] == FILE_TYPE_Q8_0
    assert not needs_reencoding(copy)
    assert any("re-encoded" in line for line in lines), lines
    stamp = copy.stat().st_mtime_ns

    again = asyncio.run(fast_weights(packaged, cache, lines.append))
    assert again == copy and copy.stat().st_mtime_ns == stamp  # reused, not written again
    assert "reusing" in lines[-1]
    assert sorted(p.name for p in cache.iterdir()) == [copy.name]  # no staging file left

    # A Q8_0 (or any other) file is loaded as it is.
    assert asyncio.run(fast_weights(copy, tmp_path / "other")) == copy
    assert not (tmp_path / "other").exists()


def test_a_copy_is_kept_per_source_file(packaged: Path, tmp_path: Path):
    moved = tmp_path / "models" / "house.gguf"
    moved.parent.mkdir()
    shutil.copy(packaged, moved)
    cache = tmp_path / "cache"
    assert reencoded_path(moved, cache) != reencoded_path(packaged, cache)
    assert reencoded_path(moved, cache).name.startswith("house-")


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(packaged: Path, tmp_path: Path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(LLMServerError) as caught:
        asyncio.run(fast_weights(packaged, blocked / "llama"))
    message = str(caught.value)
    assert packaged.name in message and "engines.llm.reencoded_dir" in message
    assert "reencode_q4_1: false" in message


def test_a_broken_q4_1_file_fails_with_the_quantizers_words(packaged: Path, tmp_path: Path):
    # The header says Q4_1; the weights stop after 4 MB.
    truncated = tmp_path / "truncated.gguf"
    with packaged.open("rb") as source:
        truncated.write_bytes(source.read(4 * 2**20))
    assert needs_reencoding(truncated)
    cache = tmp_path / "cache"
    with pytest.raises(LLMServerError, match=r"re-encoding truncated\.gguf as Q8_0 failed"):
        asyncio.run(fast_weights(truncated, cache))
    assert not any(cache.iterdir())  # nothing half-written is left to be reused


def test_a_file_that_is_no_gguf_is_left_to_llama_cpp(tmp_path: Path):
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    assert not needs_reencoding(text)
    assert asyncio.run(fast_weights(text, tmp_path / "cache")) == text


class _Launched(Exception):
    """Raised in place of starting the server: the test only wants its model file."""


@pytest.mark.parametrize("reencode", [True, False])
def test_the_embedded_llama_cpp_server_gets_the_copy_unless_the_config_says_no(
    packaged: Path, tmp_path: Path, monkeypatch, reencode: bool
):
    from voxline.bot.llm_servers import LLMServers
    from voxline.config import ServerConfig
    from voxline.engines.llm import LlamaCppServer
    from voxline.personas.schema import Persona

    launched: list[Path] = []

    async def start(self, progress=None):
        launched.append(self.model_path)
        raise _Launched

    monkeypatch.setattr(LlamaCppServer, "start", start)
    config = ServerConfig.model_validate(
        {
            "engines": {
                "llm": {
                    "backend": "llama_cpp",
                    "reencode_q4_1": reencode,
                    "reencoded_dir": str(tmp_path / "cache"),
                    "prompt_cache_mb": 16,
                }
            }
        }
    )
    persona = Persona.model_validate({"name": "p", "prompt": "Answer briefly."})
    with pytest.raises(_Launched):
        asyncio.run(LLMServers(config)._open_endpoint(persona))
    expected = reencoded_path(packaged, tmp_path / "cache") if reencode else packaged
    assert launched == [expected]
