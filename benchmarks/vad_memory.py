"""Silero VAD memory and set-up time per call: pipecat's analyzer vs voxline's shared one.

pipecat's ``SileroVADAnalyzer`` loads the ONNX model for every analyzer (every
call); voxline's ``SharedSileroVADAnalyzer`` loads it once per process and keeps
only each call's recurrent state. Each variant runs in a fresh Python process,
which builds ``--calls`` analyzers, scores one window with each (so lazy
allocations happen), and reports the growth of its resident memory per call and
the time to build one.

    .venv/bin/python benchmarks/vad_memory.py --calls 25
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json, os, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from pipecat.audio.vad.silero import SileroVADAnalyzer
from voxline.processors.vad import SharedSileroVADAnalyzer

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

kind = {kind!r}
make = SileroVADAnalyzer if kind == "pipecat" else SharedSileroVADAnalyzer
warm = make(sample_rate=16000)  # the first one pays for the library's own set-up
warm.set_sample_rate(16000)
warm.voice_confidence(np.zeros(512, np.int16).tobytes())
gc.collect()
before = rss_mb()
started = time.perf_counter()
analyzers = [make(sample_rate=16000) for _ in range({calls})]
build = (time.perf_counter() - started) / {calls}
for analyzer in analyzers:
    analyzer.set_sample_rate(16000)
    analyzer.voice_confidence(np.zeros(512, np.int16).tobytes())
gc.collect()
print(json.dumps({{"mb_per_call": (rss_mb() - before) / {calls}, "build_ms": build * 1000}}))
"""


def measure(kind: str, calls: int) -> dict[str, float]:
    """Run one variant in a fresh interpreter; its per-call memory and build time."""
    code = PROBE.format(root=str(ROOT), kind=kind, calls=calls)
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=25, help="analyzers (calls) to build")
    args = parser.parse_args()
    rows = {kind: measure(kind, args.calls) for kind in ("pipecat", "shared")}
    print(f"{args.calls} calls' Silero VAD analyzers")
    print(f"{'analyzer':<10} {'MB per call':>12} {'ms to build':>12}")
    for kind, row in rows.items():
        print(f"{kind:<10} {row['mb_per_call']:>12.2f} {row['build_ms']:>12.2f}")
    saved = rows["pipecat"]["mb_per_call"] - rows["shared"]["mb_per_call"]
    print(f"saved per call: {saved:.2f} MB, {saved * args.calls:.0f} MB at {args.calls} calls")


if __name__ == "__main__":
    main()
