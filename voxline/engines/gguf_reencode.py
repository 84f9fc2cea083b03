"""Q4_1 GGUF weights re-encoded once as Q8_0, which llama.cpp computes faster on a CPU.

The packaged SmolLM2 is stored as Q4_1, for which llama.cpp's CPU backend has no fast
matrix-matrix path: a prompt of 13 new tokens costs as much as six and a half generated
tokens, where Q8_0's costs under six, and each token is slower too. On this project's
2-core CPU, one thread
(``benchmarks/llm_reencode.py``): 13 prompt tokens 77.8 -> 56.6 ms, one generated token
12.4 -> 9.9 ms. Rounding each Q4_1 value (``d * q + m``, 16 levels a block of 32) to
the nearest of Q8_0's 255 levels moves it by at most 1/254 of its block's largest weight,
so the model stays the model: over 1000 tokens of text, the next-token distributions of
the two files differ by a mean KL of 0.0065 (a float16 copy, which llama.cpp computes by
other kernels, by 0.0038) and the perplexity by 0.4 %. Re-encoding to Q4_0 instead
would be faster still but is a second, lossy quantization (KL 0.33). The file is larger
(145 vs 98 MB for SmolLM2-135M).

The Q8_0 file is written once into a cache folder (~1 s for SmolLM2-135M) by a child
process (llama.cpp's quantizer prints to the process's own stderr and cannot be stopped
half-way), staged under a temporary name and renamed, so that two starts at once never
read a half-written file; later starts reuse it. No pipecat imports here.

    python -m voxline.engines.gguf_reencode IN.gguf OUT.gguf   # what the child runs
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path

from voxline.engines.gguf_info import GGUFError, gguf_numbers
from voxline.engines.server_process import LLMServerError, Progress

DEFAULT_REENCODED_DIR = Path.home() / ".cache" / "voxline" / "llama"
FILE_TYPE_Q4_1 = 3
FILE_TYPE_Q8_0 = 7
"""llama.cpp's ``general.file_type`` values (``LLAMA_FTYPE_MOSTLY_*``)."""


def needs_reencoding(gguf: Path) -> bool:
    """Whether ``gguf`` holds Q4_1 weights (the file type re-encoded)."""
    try:
        return gguf_numbers(gguf).get("general.file_type") == FILE_TYPE_Q4_1
    except (OSError, GGUFError):
        return False  # llama.cpp itself will say what is wrong with the file


def reencoded_path(gguf: Path, cache_dir: Path) -> Path:
    """Where the Q8_0 copy of ``gguf`` lives: one per source path and size."""
    source = gguf.expanduser().resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return cache_dir / f"{source.stem}-{digest}-{source.stat().st_size}.Q8_0.gguf"


async def fast_weights(
    gguf: Path, cache_dir: Path = DEFAULT_REENCODED_DIR, progress: Progress | None = None
) -> Path:
    """The file llama.cpp should load for ``gguf``: its Q8_0 copy if it is Q4_1, else itself.

    Raises:
        LLMServerError: the re-encoding failed (the quantizer's last lines are in the
            message) or the cache folder cannot be written.
    """
    if not needs_reencoding(gguf):
        return gguf
    report = progress or (lambda _line: None)
    target = reencoded_path(gguf, cache_dir)
    if target.is_file():
        report(f"llama.cpp weights of {gguf.name}: reusing Q8_0 copy {target}")
        return target
    staging = target.with_name(f".{target.name}.{os.getpid()}.part")
    started = time.monotonic()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, str(gguf), str(staging),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await process.communicate()
        except BaseException:
            if process.returncode is None:
                process.kill()
                await asyncio.shield(process.wait())
            raise
        if process.returncode != 0:
            tail = "\n".join(output.decode(errors="replace").splitlines()[-10:])
            raise LLMServerError(f"re-encoding {gguf.name} as Q8_0 failed:\n{tail}")
        os.replace(staging, target)
    except OSError as exc:
        raise LLMServerError(
            f"re-encoding {gguf.name} as Q8_0 into {cache_dir}: {exc} (set "
            "engines.llm.reencoded_dir to a writable folder, or engines.llm.reencode_q4_1: "
            "false to load the file as it is)"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # the folder may not exist
            staging.unlink(missing_ok=True)
    report(f"re-encoded {gguf.name} as Q8_0 in {time.monotonic() - started:.1f} s: {target}")
    return target


def quantize(source: Path, target: Path, file_type: int = FILE_TYPE_Q8_0) -> Path:
    """Write ``source`` as ``target`` in llama.cpp's ``file_type``, in this process
    (its quantizer prints to stderr); exits the process if the quantizer fails."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.allow_requantize = True
    params.nthread = 1
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise SystemExit(f"llama_model_quantize to file type {file_type} returned {status}")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m voxline.engines.gguf_reencode IN.gguf OUT.gguf")
    quantize(Path(sys.argv[1]), Path(sys.argv[2]))
