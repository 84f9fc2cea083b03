"""Dequantize a GGUF model into a safetensors checkpoint vLLM can serve.

Run by the vLLM virtual environment's Python (it has transformers, gguf and
accelerate; voxline's own environment need not):

    .venv-vllm/bin/python voxline/engines/vllm_convert.py MODEL.gguf OUT_DIR

The checkpoint is written to a temporary folder beside ``OUT_DIR`` and renamed
into place at the end, so an interrupted conversion (SIGTERM, Ctrl-C, an error)
never leaves half a model, and its temporary folder is removed. When another
process finished the same checkpoint first, that one is kept.
This file imports nothing from voxline: it runs outside voxline's environment.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path


def convert(gguf: Path, out_dir: Path) -> None:
    """Write ``gguf`` as a bf16 safetensors checkpoint (model, config, tokenizer) to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        # Loaded from GGUF the model remembers a quantizer; the weights are plain now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(
            staging
        )
        try:
            staging.rename(out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process got there first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through convert(), which removes its staging


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_convert.py MODEL.gguf OUT_DIR")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
