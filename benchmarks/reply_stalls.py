"""Stalls inside replies on the phone: two server settings, the same callers, one run.

Two ``voxline serve`` processes run at once with the same persona and LLM backend
and differ only in the settings of the chosen comparison (``--compare``):

* ``send-ahead`` (the phone output's pacing):

  * **realtime**: ``twilio: {out_frame_ms: 20, send_ahead_ms: 0}``: a 20 ms media
    message, then a sleep of its length, as pipecat's websocket output writes
    (nothing held in reserve at the far end);
  * **ahead**: the defaults, 60 ms messages kept up to 120 ms ahead of the caller's ear.

* ``tts-urgent`` (the shared Piper engine's worker kept for first chunks):

  * **reserved**: ``engines: {piper: {urgent_ms: null}}``: later sentences never use
    the worker kept for first chunks;
  * **urgent**: the defaults (``urgent_ms: 500``): a later sentence needed within
    500 ms, and not late yet, may use it.

* ``tts-urgent-first`` (whether such a sentence goes before waiting first chunks):

  * **first**: ``engines: {piper: {urgent_before_first: false}}``: first chunks go
    before every later sentence;
  * **urgent**: the defaults: a later sentence whose caller runs out of audio within
    ``urgent_ms``, or has already, goes before them.

* ``tts-pieces`` (how long a piece may be): **long**, the defaults (``max_phonemes:
  100``), against **short** (``max_phonemes: 50``).

Rounds alternate between the two (first, second, first, ...), so background load
falls on both alike. In each round N Twilio-protocol callers (``voxline.bench``:
espeak-ng voices, not the bot's Piper voice) dial at once, wait for their greetings,
and speak in the same 20 ms frame, two turns each. The caller plays each message when
it arrives or when the audio before it ends, as Twilio does; a stall is a wait of at
least ``--underrun-ms`` inside one bot reply (the bench's "underrun"). Printed per
system: stalls inside replies (count, p50 and longest), all stalled seconds, and the
heard voice-to-voice p50/p95, with the ratios first / second on the last line.

    # N=4, 3 rounds each; or --calls 8 --rounds 2
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.reply_stalls --compare send-ahead
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.reply_stalls --compare tts-urgent
    # each server at DEBUG, its output kept: the engine's line for every piece ready
    # after its caller ran out of audio, the output's for every gap
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.reply_stalls \
        --compare tts-urgent-first --calls 12 --log-level DEBUG --logs /tmp/stalls
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import p50, p95, serve_voxline  # noqa: E402
from voxline.bench.callers import Clips, script  # noqa: E402
from voxline.bench.calls import Call, Line, burst  # noqa: E402
from voxline.bench.run import settle  # noqa: E402

TOKEN = "reply-stalls-benchmark-token"
NUMBER = "+15550100060"
PERSONA = ROOT / "personas" / "bank_support.yaml"
COMPARISONS: dict[str, dict[str, dict[str, Any]]] = {
    "send-ahead": {
        "realtime": {"twilio": {"out_frame_ms": 20, "send_ahead_ms": 0}},
        "ahead": {},  # the defaults
    },
    "tts-urgent": {
        "reserved": {"engines": {"piper": {"urgent_ms": None}}},
        "urgent": {},  # the defaults: urgent_ms 500
    },
    "tts-urgent-first": {
        "first": {"engines": {"piper": {"urgent_before_first": False}}},
        "urgent": {},  # the defaults: urgent_before_first true
    },
    "tts-pieces": {
        "long": {},  # the defaults
        "short": {"engines": {"piper": {"max_phonemes": 50}}},
    },
}


def report(name: str, calls: list[Call]) -> tuple[int, float, float]:
    """Print one system's line; return (stalls, stalled seconds, heard p50 ms)."""
    stalls = sorted(gap * 1e3 for call in calls for gap in call.underruns)
    stalled = sum(call.stall_secs for call in calls)
    heard = [ms for call in calls for ms in call.latencies if ms is not None]
    errors = sum(call.error is not None for call in calls)
    longest = f"{stalls[-1]:.0f}" if stalls else "-"
    middle = f"{p50(stalls):.0f}" if stalls else "-"
    print(
        f"{name:<9} calls {len(calls):>3}  stalls in replies {len(stalls):>3} "
        f"(p50 {middle} ms, longest {longest} ms)  stalled {stalled:5.2f} s  "
        f"heard p50 {p50(heard):.0f} ms p95 {p95(heard):.0f} ms (n={len(heard)})  errors {errors}",
        flush=True,
    )
    return len(stalls), stalled, p50(heard)


async def run(args: argparse.Namespace) -> None:
    systems = COMPARISONS[args.compare]
    with tempfile.TemporaryDirectory(prefix="voxline-reply-stalls-") as folder:
        tmp = Path(folder)
        servers = {}
        try:
            for name, settings in systems.items():
                (tmp / name).mkdir()
                engines = {"llm": {"backend": args.backend}, **settings.get("engines", {})}
                servers[name] = await asyncio.to_thread(
                    serve_voxline,
                    tmp / name,
                    numbers={NUMBER: PERSONA},
                    default_persona=PERSONA,
                    token=TOKEN,
                    max_calls=max(8, args.calls),
                    engines=engines,
                    twilio=settings.get("twilio"),
                    log_level=args.log_level,
                )
                print(f"reply_stalls: {name} ready ({settings or 'defaults'})", flush=True)
            clips = Clips(tmp)
            calls: dict[str, list[Call]] = {name: [] for name in systems}
            caller = 0
            for _ in range(args.rounds):
                scripts = [script(caller + i, 2, args.seed) for i in range(args.calls)]
                caller += args.calls
                for s in scripts:
                    for u in s.utterances:
                        await asyncio.to_thread(clips.get, u, s.voice)
                for name, (_, url) in servers.items():  # the same callers on both
                    line = Line(url=url, auth_token=TOKEN, number=NUMBER)
                    calls[name] += await burst(line, scripts, clips, args.underrun_ms / 1000)
                    await settle(url)  # the last call's teardown, off the next round
        finally:
            for name, (server, _) in servers.items():
                await asyncio.to_thread(server.stop)
                if args.logs is not None:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    (args.logs / f"{name}.log").write_text(server.output)
                    print(f"reply_stalls: {name}'s server output in {args.logs / name}.log")
    print(
        f"\n{args.calls} calls at once, {args.rounds} rounds each, {args.backend}, "
        f"stall >= {args.underrun_ms:.0f} ms:"
    )
    first, second = systems
    before = report(first, calls[first])
    after = report(second, calls[second])
    print(
        f"{args.compare}: stalls {first}/{second} {before[0]}/{after[0]}, "
        f"stalled seconds {before[1] / max(after[1], 1e-9):.2f}x, "
        f"heard p50 ratio {before[2] / after[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="send-ahead")
    parser.add_argument("--calls", type=int, default=4, help="callers at once (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per system (default 3)")
    parser.add_argument("--backend", choices=["vllm", "llama_cpp"], default="vllm")
    parser.add_argument("--underrun-ms", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--log-level", help="the servers' log level (DEBUG: every stall's cause)")
    parser.add_argument("--logs", type=Path, help="a folder to keep each server's output in")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
