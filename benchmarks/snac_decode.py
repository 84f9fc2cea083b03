"""SNAC window decoding: windows/s batched vs one at a time, at batch 1, 4, 8, 16.

Each window is 28 Orpheus codes (4 frames, 8 192 samples at 24 kHz), what one call
decodes every 7 tokens. "one at a time" decodes a batch's windows one after the
other; "batched" decodes them as one tensor batch, as the shared engine does.
Runs on the device given (cpu here; the same script measures a GPU). Uses real
weights if --model names them, else a seeded random SNAC (same architecture and cost).

    .venv/bin/python benchmarks/snac_decode.py --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxline.engines.orpheus import SAMPLE_RATE, WINDOW_CODES  # noqa: E402
from voxline.engines.snac import SNACDecoder, load_snac  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="random:0")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    decoder = SNACDecoder(load_snac(args.model, device=args.device), device=args.device)
    decoder.warm_up()
    rng = np.random.default_rng(0)
    window_secs = 4 * 2048 / SAMPLE_RATE
    print(f"SNAC 24 kHz on {args.device} ({args.model}); a window is {window_secs * 1000:.0f} ms")
    print(f"{'batch':>5} {'one at a time':>15} {'batched':>10} {'ratio':>6}  (windows/s)")
    for size in args.batches:
        windows = [rng.integers(0, 4096, WINDOW_CODES) for _ in range(size)]
        rates = []
        for batched in (False, True):
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                if batched:
                    decoder.decode_batch_blocking(windows)
                else:
                    for window in windows:
                        decoder.decode_blocking(window)
                done += size
            rates.append(done / (time.perf_counter() - started))
        print(f"{size:>5} {rates[0]:>15.1f} {rates[1]:>10.1f} {rates[1] / rates[0]:>6.2f}")
    # One window per 85 ms frame of speech keeps a stream real-time.
    print(f"real time needs {1 / (2048 / SAMPLE_RATE):.1f} windows/s per stream")


if __name__ == "__main__":
    main()
