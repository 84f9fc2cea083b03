"""``engines.llm.model`` in voxline.yaml is the model of every persona that names none.

The persona's own ``llm.model`` wins; without one, ``serve`` and ``talk`` give it the
server config's model, and the embedded server (llama.cpp here; vLLM reads the same
persona field) is launched with that model.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.conftest import VOXLINE
from voxline.bot.runtime import Runtime
from voxline.config import load_config
from voxline.engines.gguf_reencode import reencoded_path
from voxline.models import resolve_llm_gguf
from voxline.server.serve import load_personas

PERSONA = "name: {name}\nprompt: You answer in one short sentence.\nturn: {{model: none}}\n"


def write_setup(tmp_path: Path, model: str) -> Path:
    (tmp_path / "unnamed.yaml").write_text(PERSONA.format(name="unnamed"))
    (tmp_path / "named.yaml").write_text(PERSONA.format(name="named") + "llm: {model: smollm2}\n")
    (tmp_path / "external.yaml").write_text(
        PERSONA.format(name="external") + "llm: {base_url: 'http://127.0.0.1:9'}\n"
    )
    config = tmp_path / "voxline.yaml"
    config.write_text(
        f"default_persona: unnamed.yaml\nnumbers:\n  '+15550100001': named.yaml\n"
        f"  '+15550100002': external.yaml\nengines:\n  llm:\n    backend: llama_cpp\n"
        f"    model: {model}\n"
    )
    return config


def test_personas_without_a_model_get_the_configs(tmp_path):
    config_path = write_setup(tmp_path, "qwen2.5-3b-instruct")
    personas = {
        persona.name: persona
        for persona in load_personas(load_config(config_path), config_path).values()
    }
    assert personas["unnamed"].llm.model == "qwen2.5-3b-instruct"
    assert personas["external"].llm.model == "qwen2.5-3b-instruct"
    assert personas["named"].llm.model == "smollm2"


def test_without_a_config_the_default_stays_smollm2(tmp_path):
    (tmp_path / "p.yaml").write_text(PERSONA.format(name="p"))
    config = load_config(None).model_copy(update={"default_persona": tmp_path / "p.yaml"})
    [persona] = load_personas(config, None).values()
    assert persona.llm.model == "smollm2"


def test_talk_runs_the_configs_model(tmp_path, voxline_env):
    """A model the config names and that is not installed stops `talk` with exit 2, naming it."""
    missing = tmp_path / "models" / "not-installed.gguf"
    config = write_setup(tmp_path, str(missing))
    caller = tmp_path / "caller.wav"
    tone = np.sin(np.arange(16_000) * 2 * np.pi * 220 / 16_000) * 0.3
    soundfile.write(str(caller), tone.astype(np.float32), 16_000)
    command = [
        VOXLINE,
        "talk",
        "--config",
        str(config),
        "--persona",
        str(tmp_path / "unnamed.yaml"),
    ]
    command += ["--input", str(caller), "--output", str(tmp_path / "reply.wav")]
    result = subprocess.run(command, capture_output=True, text=True, env=voxline_env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"GGUF model file not found: {missing}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_embedded_llama_cpp_server_serves_the_configs_model(tmp_path):
    alias = tmp_path / "models" / "house-model.gguf"
    alias.parent.mkdir()
    alias.symlink_to(resolve_llm_gguf("smollm2"))
    config_path = write_setup(tmp_path, str(alias))
    config = load_config(config_path)
    personas = load_personas(config, config_path)
    unnamed = next(p for p in personas.values() if p.name == "unnamed")

    async def run() -> tuple[str, list[str], str]:
        async with Runtime(config) as runtime:
            await runtime.prepare(unnamed)
            endpoint = runtime.llm.endpoint(unnamed)
            # The packaged Q4_1 file is loaded as its Q8_0 copy (engines/gguf_reencode.py).
            loaded = runtime.llm.server(unnamed).model_path
            assert loaded == reencoded_path(alias, config.engines.llm.reencoded_dir)
            async with httpx.AsyncClient(timeout=30) as client:
                models = (await client.get(f"{endpoint.base_url}/v1/models")).json()
                reply = await client.post(
                    f"{endpoint.base_url}/v1/chat/completions",
                    json={
                        "model": endpoint.model,
                        "messages": [{"role": "user", "content": "Say hello."}],
                        "max_tokens": 8,
                    },
                )
            reply.raise_for_status()
            text = reply.json()["choices"][0]["message"]["content"]
            return endpoint.model, [m["id"] for m in models["data"]], text

    model, served, text = asyncio.run(run())
    assert model == str(alias)
    assert served == [str(alias)]
    assert text.strip()


@pytest.mark.slow
def test_the_embedded_vllm_server_serves_the_configs_model(tmp_path):
    """On vLLM the config names a checkpoint directory; a persona without a model runs it."""
    from voxline.engine_config import VLLMConfig
    from voxline.engines.vllm import prepare_vllm_model

    vllm = VLLMConfig()
    # The packaged SmolLM2, converted once into a directory vLLM loads as it is.
    checkpoint = asyncio.run(
        prepare_vllm_model(
            "smollm2",
            vllm.python,
            resolve_llm_gguf("smollm2"),
            checkpoint_dir=vllm.checkpoint_dir,
        )
    )
    config_path = write_setup(tmp_path, checkpoint)
    config = load_config(config_path).with_llm_backend("vllm")
    unnamed = next(p for p in load_personas(config, config_path).values() if p.name == "unnamed")
    assert unnamed.llm.model == checkpoint

    async def run() -> tuple[str, list[str]]:
        async with Runtime(config) as runtime:
            await runtime.prepare(unnamed)
            endpoint = runtime.llm.endpoint(unnamed)
            async with httpx.AsyncClient(timeout=30) as client:
                models = (await client.get(f"{endpoint.base_url}/v1/models")).json()
            return endpoint.model, [m["id"] for m in models["data"]]

    model, served = asyncio.run(run())
    assert model == checkpoint
    assert served == [checkpoint]


def test_a_gguf_named_by_its_path_is_converted_into_the_checkpoint_folder(tmp_path):
    """engines.llm.model: /models/house.gguf on vLLM: the checkpoint stays in checkpoint_dir."""
    from voxline.engines.vllm import checkpoint_path

    gguf = tmp_path / "models" / "house.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    checkpoints = tmp_path / "checkpoints"
    for name in (str(gguf), "models/house.gguf"):
        target = checkpoint_path(name, gguf, checkpoints)
        assert target.parent == checkpoints, target
        assert target.name.startswith("house-") and target.name.endswith("-64")
    other = tmp_path / "elsewhere" / "house.gguf"
    assert checkpoint_path(str(other), gguf, checkpoints) != checkpoint_path(
        str(gguf), gguf, checkpoints
    )
    # Packaged names keep the folders earlier starts converted into.
    assert checkpoint_path("smollm2", gguf, checkpoints) == checkpoints / "smollm2-64"
