"""The packaged SmolLM2's Q4_1 weights against copies re-encoded by llama.cpp's quantizer.

For each file (Q4_1 as packaged; Q8_0, what ``engines.llm.reencode_q4_1`` loads; float16
and Q4_0 for reference), llama.cpp with one thread (the CPU budget's LLM thread on 2
cores) times a prompt of 13 new tokens after a cached prefix of 211 (a caller's turn
after the persona's prompt), one generated token, and the 211-token prefix itself
(medians of 5, 10 and 1 runs). Then, over the first 1000 tokens of README.md, how far
each copy's next-token distributions are from the packaged file's: mean and p99 KL
divergence, how often the most likely token is the same, and the perplexity of the text.

    .venv/bin/python -m benchmarks.llm_reencode
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxline.engines.gguf_reencode import fast_weights, quantize  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402

PREFIX = b"You are a helpful bank assistant. " * 30
TURN = b" Hi, what is my account balance today please?<|im_end|>"


def timings(path: Path) -> tuple[float, float, float]:
    """Median ms of 13 new prompt tokens, of one token, and of the 211-token prefix."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=1, n_threads_batch=1, n_ctx=2048,
                n_batch=64, n_ubatch=64, verbose=False)  # fmt: skip
    prefix = llm.tokenize(PREFIX)
    turn = llm.tokenize(TURN, add_bos=False)[:13]
    started = time.perf_counter()
    llm.eval(prefix)
    prefix_ms = (time.perf_counter() - started) * 1000

    def after_prefix(tokens: list[int], runs: int) -> float:
        times = []
        for _ in range(runs):
            llm.n_tokens = len(prefix)
            began = time.perf_counter()
            llm.eval(tokens)
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times)

    return after_prefix(turn, 5), after_prefix(turn[:1], 10), prefix_ms


def log_probs(path: Path, text: bytes) -> tuple[np.ndarray, list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=2, n_ctx=2048, n_batch=512,
                logits_all=True, verbose=False)  # fmt: skip
    tokens = llm.tokenize(text)[:1000]
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    scores -= scores.max(axis=1, keepdims=True)
    return scores - np.log(np.exp(scores).sum(axis=1, keepdims=True)), tokens


def perplexity(logp: np.ndarray, tokens: list[int]) -> float:
    return float(np.exp(-logp[np.arange(len(tokens) - 1), tokens[1:]].mean()))


def main() -> None:
    import llama_cpp

    packaged = resolve_llm_gguf("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {
            "Q4_1 (packaged)": packaged,
            "Q8_0 (reencode_q4_1)": asyncio.run(fast_weights(packaged, folder)),
            "F16": quantize(packaged, folder / "f16.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_F16),
            "Q4_0": quantize(packaged, folder / "q4_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
        }
        text = (ROOT / "README.md").read_bytes()
        base, tokens = log_probs(packaged, text)
        for name, path in files.items():
            turn_ms, token_ms, prefix_ms = timings(path)
            logp, _ = log_probs(path, text) if path != packaged else (base, tokens)
            kl = (np.exp(base) * (base - logp)).sum(axis=1)
            agree = float((base.argmax(axis=1) == logp.argmax(axis=1)).mean())
            print(
                f"llm_reencode {name:<20} {path.stat().st_size / 1e6:4.0f} MB | 13 prompt "
                f"tokens {turn_ms:5.1f} ms, 1 token {token_ms:5.1f} ms, 211-token prefix "
                f"{prefix_ms:5.0f} ms | vs packaged: KL mean {kl.mean():.4f} p99 "
                f"{np.percentile(kl, 99):.4f}, top-1 same {agree:.3f}, perplexity "
                f"{perplexity(logp, tokens):.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
