"""The server's own CPU for calls in which nobody speaks: the cost of carrying a call.

Every 20 ms of a phone call brings a frame of the caller's audio, speaking or not: it is
decoded, raised to 16 kHz, scored by the VAD and handed on. This measures what that costs
the ``voxline serve`` process (the CPU its threads use while N callers are connected and
quiet), because on a 2-core machine every share of a core the calls take is a share the
models (Whisper, the LLM, Piper) do not get when someone does speak.

Two variants of the same server run one after the other, round by round: **now**,
voxline as it is, against the one ``--against`` names:

* **vad-thread** (the default): each call's VAD hands every frame to a thread of its
  own and awaits the result, as pipecat's analyzer does and voxline's did until
  2026-12-06 (``SharedSileroVADAnalyzer.analyze_audio`` put back to pipecat's,
  patched in at start-up); now the VAD scores the frame on the event loop;
* **forwarded**: the turn-taker passes each audio frame on down the pipeline, as it did
  until 2026-12-05 (``TurnTaker(forward_audio=True)``, patched in at start-up): every
  processor and observer after it takes a hop of the event loop per frame.

In each round N Twilio-protocol callers dial at once, wait for the greeting, then send
``--secs`` of line noise (about -60 dBFS, as a quiet phone line carries); the server's
CPU time (user + system, all its threads; not the LLM server, which is idle) is read
over that window. The persona is the bank's with its idle line moved past the window.
Printed per variant: CPU in % of one core and in ms per call-second (median over the
rounds), the main thread's share (where the event loop runs), and the ratio.

    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.quiet_calls   # N=8, 3 rounds
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.quiet_calls --calls 4 --rounds 2
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.quiet_calls --against forwarded
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, serve_voxline  # noqa: E402
from voxline.bench.stack_usage import main_thread_secs  # noqa: E402
from voxline.transports.twilio_caller import TwilioCaller  # noqa: E402

TOKEN = "quiet-calls-benchmark-token"
NUMBER = "+15550100070"
PERSONA = ROOT / "personas" / "bank_support.yaml"
NOISE_DBFS = -60.0
# `voxline serve` with the turn-taker forwarding the caller's audio, as it did before.
FORWARDING_SERVE = """
import sys
from voxline.bot.cli import main
from voxline.processors import turn

original = turn.TurnTaker.__init__

def forwarding(self, *args, **kwargs):
    kwargs.setdefault("forward_audio", True)
    original(self, *args, **kwargs)

turn.TurnTaker.__init__ = forwarding
sys.exit(main(sys.argv[1:]))
"""
# `voxline serve` with each call's VAD scoring frames in a thread of its own, as pipecat's does.
VAD_THREAD_SERVE = """
import sys
from pipecat.audio.vad.vad_analyzer import VADAnalyzer
from voxline.bot.cli import main
from voxline.processors import vad

vad.SharedSileroVADAnalyzer.analyze_audio = VADAnalyzer.analyze_audio
sys.exit(main(sys.argv[1:]))
"""
LAUNCHERS = {"forwarded": FORWARDING_SERVE, "vad-thread": VAD_THREAD_SERVE}


def quiet_persona(tmp: Path, secs: float) -> Path:
    """The bank persona with its idle line and timeout after the measured window."""
    persona = yaml.safe_load(PERSONA.read_text())
    persona["tools_dir"] = str((PERSONA.parent.parent / "tools").resolve())
    persona.setdefault("limits", {})
    persona["limits"]["idle_prompt_secs"] = secs + 60
    persona["limits"]["idle_timeout_secs"] = secs + 60
    path = tmp / "quiet_bank.yaml"
    path.write_text(yaml.safe_dump(persona, sort_keys=False))
    return path


def start_server(tmp: Path, persona: Path, variant: str, calls: int) -> tuple[ServerProcess, str]:
    """``voxline serve`` (the light LLM engine: nobody asks it anything) of one variant."""
    folder = tmp / variant
    folder.mkdir(exist_ok=True)
    return serve_voxline(
        folder,
        numbers={NUMBER: persona},
        default_persona=persona,
        token=TOKEN,
        max_calls=max(8, calls),
        engines={"llm": {"backend": "llama_cpp"}},
        launcher=None if variant == "now" else [sys.executable, "-c", LAUNCHERS[variant]],
    )


def line_noise(secs: float, seed: int) -> np.ndarray:
    """A quiet phone line: white noise at :data:`NOISE_DBFS`, 16 kHz."""
    amplitude = 10 ** (NOISE_DBFS / 20)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(secs * 16_000)) * amplitude).astype(np.float32)


async def one_round(url: str, pid: int, calls: int, secs: float) -> tuple[float, float]:
    """N quiet calls at once; the server's CPU seconds per second over the window, all
    its threads and its main thread (the event loop)."""
    arrived = 0
    everyone = asyncio.Event()

    async def gate() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == calls:
            everyone.set()
        await everyone.wait()

    async def caller(index: int) -> None:
        phone = TwilioCaller(url, auth_token=TOKEN, number=NUMBER, caller_id=f"+1555020{index:04d}")
        await phone.call(
            line_noise(secs + 3.0, index), 16_000, gate=gate, timeout=secs + 90,
            hang_up_after_quiet=0.5,
        )  # fmt: skip

    tasks = [asyncio.create_task(caller(i)) for i in range(calls)]
    try:
        await asyncio.wait_for(everyone.wait(), 60)
        await asyncio.sleep(1.0)  # the greetings' last audio and the calls' first frames
        process = psutil.Process(pid)
        before, loop_before, started = (
            process.cpu_times(),
            main_thread_secs(process),
            time.monotonic(),
        )
        await asyncio.sleep(secs)
        after, loop_after = process.cpu_times(), main_thread_secs(process)
        elapsed = time.monotonic() - started
    finally:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {calls} calls failed: {failed[0]!r}")
    used = (after.user - before.user) + (after.system - before.system)
    return used / elapsed, (loop_after - loop_before) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8, help="quiet callers at once (default 8)")
    parser.add_argument("--secs", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (default 3)")
    parser.add_argument(
        "--against", choices=sorted(LAUNCHERS), default="vad-thread",
        help="the variant compared with voxline as it is (default vad-thread)",
    )  # fmt: skip
    args = parser.parse_args()
    variants = ("now", args.against)
    usage: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="quiet_calls_") as name:
        tmp = Path(name)
        persona = quiet_persona(tmp, args.secs)
        for round_index in range(args.rounds):
            # Alternate the order so that drifting background load falls on both.
            order = variants if round_index % 2 == 0 else variants[::-1]
            for variant in order:
                server, url = start_server(tmp, persona, variant, args.calls)
                try:
                    cores, loop = await one_round(url, server.process.pid, args.calls, args.secs)
                finally:
                    server.stop()
                usage[variant].append((cores, loop))
                print(
                    f"round {round_index + 1} {variant:<10} {args.calls} quiet calls: server CPU "
                    f"{cores * 100:5.1f} % of a core, main thread {loop * 100:5.1f} %",
                    flush=True,
                )
    medians = {
        variant: (
            statistics.median(cores for cores, _ in values),
            statistics.median(loop for _, loop in values),
        )
        for variant, values in usage.items()
    }
    for variant in variants:
        cores, loop = medians[variant]
        print(
            f"{variant:<10} N={args.calls}: server CPU {cores * 100:5.1f} % of a core "
            f"(median of {args.rounds}), {cores / args.calls * 1000:.1f} ms per call-second, "
            f"main thread {loop * 100:5.1f} %"
        )
    (now, now_loop), (other, other_loop) = medians["now"], medians[args.against]
    print(
        f"quiet_calls: N={args.calls} server CPU {args.against}/now {other / now:.2f}x, "
        f"main thread {other_loop / now_loop:.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
