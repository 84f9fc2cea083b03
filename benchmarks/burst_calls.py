"""A burst of phone callers who all speak at the same moment: voxline vs stock pipecat.

For each LLM backend (``--backends``, default ``vllm llama_cpp``, written explicitly
into the generated ``voxline.yaml`` as ``engines.llm.backend``) this starts one
fresh ``voxline serve`` with the bank persona and ``max_calls: 8``, then, for each
N in ``--calls`` (default 1 2 4 8), places N simultaneous calls with the
Twilio-protocol caller, ``ceil(--samples / N)`` rounds of them. Every caller waits
for the greeting; once all N have heard it (an asyncio gate, not a stagger) they all
start speaking in the same 20 ms frame. Each call has ``--turns`` turns: the later
ones follow the bot's answer after a random (seeded) pause of 0.5-2.0 s, and some
utterances pause 0.6-1.0 s in mid-sentence. Callers speak with espeak-ng in eight
voices of several speeds and pitches; no test uses espeak-ng, and no Piper voice
other than the persona's is installed here, so there is no Piper caller.

The same callers (same seed: same voices, utterances and pauses) then call a stock
pipecat 1.14 Twilio bot (``voxline/bench/stock_bot.py``: per-call Whisper,
Piper, Silero VAD and Smart Turn v3) backed by an LLM server of the same kind,
started by this script (vLLM with voxline's flags; ``llama_cpp.server`` the way a
pipecat user starts it, without voxline's RAM prompt cache).

The N=1 rounds come first on each fresh server: consecutive single calls, whose
first-reply latencies are printed in order (the trend from the first to the last).

Measured per system and N:

* **heard** latency: the caller's last voiced frame sent -> the first voiced bot
  frame received, for the first reply (the burst) and for all turns. A turn during
  which the caller heard the bot's voice (a reply to half a sentence, or the bot
  talking over the caller) has no heard latency: it is counted instead.
* **per-stage server breakdown** (voxline only): the ``turn {json}`` lines the server
  logs, one per turn: stt, llm_first_token, first_chunk, tts_first_audio,
  voice_to_voice, commit (p50/p95 over all turns of that N).
* **replies to half a sentence**: utterances with a mid-sentence pause during which
  the caller heard the bot's voice (between its first and last voiced frame).
* **audio underruns**: the caller plays each ``media`` message when it arrives or
  when the audio before it has finished, whichever is later (Twilio plays a
  stream the same way). An underrun is a stall of at least ``--underrun-ms``
  (default 60 ms, three phone frames) inside one bot utterance: the audio before
  it had finished playing and the next frame arrived that much later, with voiced
  bot audio before it since the utterance began and after it, and no caller
  utterance starting nor ``clear`` in between. The greeting's underruns are
  counted apart from the replies'. Beside them, voxline's own count ("server"): the
  underruns its phone output reported on each call's end line (greetings included),
  from its model of the caller's playout.
* **calls not answered**: refused, failed, or without a heard latency for the first
  question: no reply before the caller gave up (30 s), or the bot spoke during it.
* **memory**: RSS of every process of the stack (voxline serve and its LLM server
  with vLLM's EngineCore; or the stock bot and its LLM server), sampled with psutil
  every 0.25 s during each N; the largest per process, and the largest sum.
* **CPU**: the cores each kind of process kept busy on average during each N (its
  CPU seconds over the phase's wall time; the bot server's main thread, where its
  event loop runs, apart), the machine's busy cores (the callers of this script
  too), and the share of 0.25 s samples in which the machine was at least 95 %
  busy: whether the cores were the limit.

    .venv/bin/python -m benchmarks.burst_calls            # both backends, N=1,2,4,8, stock too
    .venv/bin/python -m benchmarks.burst_calls --quick    # N=1,2, 2 turns: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import p50, p95, serve_voxline  # noqa: E402
from voxline.bench.callers import UTTERANCES, VOICES, Clips, script  # noqa: E402
from voxline.bench.calls import Call, Line, burst  # noqa: E402
from voxline.bench.stack_usage import CpuUse, StackUsage  # noqa: E402
from voxline.bench.stock import StockStack  # noqa: E402
from voxline.engines.llm import free_port  # noqa: E402
from voxline.engines.server_process import SupervisedServer  # noqa: E402
from voxline.models import resolve_llm_gguf  # noqa: E402

TOKEN = "burst-calls-benchmark-token"
NUMBER = "+15550100050"
PERSONA = ROOT / "personas" / "bank_support.yaml"
BACKENDS = ("vllm", "llama_cpp")
SYSTEMS = ("voxline", "stock")
STAGES = ("stt", "llm_first_token", "first_chunk", "tts_first_audio", "voice_to_voice", "commit")
TURN_LINE = re.compile(r"\bturn (\{.*\})\s*$")
UNDERRUN_LINE = re.compile(r" ended: events .*; (\d+) audio underruns \(")
"""voxline's end-of-call line: the underruns its phone output counted for the call."""


# --- the stacks under test ----------------------------------------------------------------------


class LlamaCppPlain(SupervisedServer):
    """``llama_cpp.server`` as a pipecat user starts it: no RAM prompt cache.

    ``--interrupt_requests False`` is kept: with the library's default a new request
    ends a reply still streaming to another call (a pipecat user meets that at once).
    """

    def __init__(self, model: Path):
        super().__init__(
            name="llama.cpp server",
            host="127.0.0.1",
            port=free_port(),
            model_alias="smollm2",
            startup_timeout=120,
        )
        self.model = model

    def command(self) -> list[str]:
        threads = str(os.cpu_count() or 1)
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--model_alias", self.model_alias, "--host", self.host, "--port", str(self.port),
            "--n_ctx", "4096", "--n_threads", threads, "--n_threads_batch", threads,
            "--interrupt_requests", "False",
        ]  # fmt: skip


@dataclass
class Stack:
    """A running system: its URL, the processes to measure, its output, and how to stop it."""

    url: str
    roots: list[int]
    lines: list[str]
    stop: Callable[[Path], Awaitable[None]]


async def start_voxline_stack(
    backend: str, tmp: Path, max_calls: int, persona: Path, engines: dict, log_level: str
) -> Stack:
    server, url = await asyncio.to_thread(
        serve_voxline,
        tmp,
        numbers={NUMBER: persona},
        default_persona=persona,
        token=TOKEN,
        max_calls=max_calls,
        engines={**engines, "llm": {**engines.get("llm", {}), "backend": backend}},
        log_level=log_level,
    )

    async def stop(log: Path) -> None:
        code = await asyncio.to_thread(server.stop)
        log.write_text(server.output)
        if code not in (0, -15):
            print(f"server exited {code}:\n" + "\n".join(server.lines[-30:]), flush=True)

    return Stack(url=url, roots=[server.process.pid], lines=server.lines, stop=stop)


async def start_stock_stack(backend: str, max_calls: int) -> Stack:
    """The stock bot (``voxline.bench.stock_bot``) on llama.cpp as a pipecat user starts
    it, or on vLLM with voxline's flags."""
    model = "smollm2"
    llm = LlamaCppPlain(resolve_llm_gguf(model)) if backend == "llama_cpp" else None
    stack = StockStack(PERSONA, backend, max_calls, llm=llm)
    await stack.start()

    async def stop(log: Path) -> None:
        await stack.stop()
        log.write_text("\n".join(stack.tail))

    return Stack(url=stack.url, roots=stack.roots, lines=[], stop=stop)


# --- one system through every N ------------------------------------------------------------------


@dataclass
class Phase:
    """N simultaneous callers, one or more rounds, on one system."""

    n: int
    calls: list[Call]
    turns: list[dict[str, float | None]]
    memory: dict[str, float]
    memory_total: float
    cpu: CpuUse
    secs: float
    server_underruns: int | None = None

    @property
    def first(self) -> list[float]:
        return [c.first_reply for c in self.calls if c.first_reply is not None]

    @property
    def every(self) -> list[float]:
        return [value for c in self.calls for value in c.latencies if value is not None]

    @property
    def not_answered(self) -> int:
        return sum(not c.answered for c in self.calls)

    @property
    def underruns(self) -> int:
        return sum(len(c.underruns) for c in self.calls)

    @property
    def greeting_underruns(self) -> int:
        return sum(len(c.greeting_underruns) for c in self.calls)

    @property
    def paused_turns(self) -> int:
        return sum(UTTERANCES[u].paused for c in self.calls for u in c.script.utterances)


def server_underruns(lines: Sequence[str]) -> int | None:
    """The underruns voxline's phone output counted in the calls that ended (None: no
    voxline end-of-call line, as from a stock pipecat bot)."""
    counts = [int(match.group(1)) for line in lines if (match := UNDERRUN_LINE.search(line))]
    return sum(counts) if counts else None


def server_turns(lines: Sequence[str]) -> list[dict[str, float | None]]:
    """The latency_ms stages of every ``turn {json}`` line the server logged."""
    turns = []
    for line in lines:
        if match := TURN_LINE.search(line):
            try:
                turns.append(json.loads(match.group(1))["latency_ms"])
            except (ValueError, KeyError):
                continue
    return turns


async def run_system(
    name: str,
    start: Callable[[], Awaitable[Stack]],
    counts: list[int],
    args: argparse.Namespace,
    clips: Clips,
) -> dict[int, Phase]:
    began = time.monotonic()
    stack = await start()
    print(f"{name}: ready in {time.monotonic() - began:.0f}s at {stack.url}", flush=True)
    phases: dict[int, Phase] = {}
    caller = 0
    try:
        for n in counts:
            usage = StackUsage(stack.roots).start()
            offset = len(stack.lines)
            phase_began = time.monotonic()
            calls: list[Call] = []
            for _ in range(math.ceil(args.samples / n)):
                scripts = [script(caller + i, args.turns, args.seed) for i in range(n)]
                caller += n
                line = Line(stack.url, TOKEN, NUMBER)
                calls += await burst(line, scripts, clips, args.underrun_ms / 1000)
                await asyncio.sleep(1.5)  # the server ends the calls before the next round
            usage.stop()
            phase = Phase(
                n=n,
                calls=calls,
                turns=server_turns(stack.lines[offset:]),
                memory=usage.by_label(),
                memory_total=usage.peak_total,
                cpu=usage.cpu(),
                secs=time.monotonic() - phase_began,
                server_underruns=server_underruns(stack.lines[offset:]),
            )
            phases[n] = phase
            report_phase(name, phase)
    finally:
        log = args.tmp / f"{name.replace('/', '_')}.log"
        await stack.stop(log)
        print(f"{name}: server output in {log}", flush=True)
    return phases


# --- printing -----------------------------------------------------------------------------------


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def clock(at: float) -> str:
    """A ``time.time()`` as the server's log prints it (local time, milliseconds)."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def report_phase(name: str, phase: Phase) -> None:
    calls = phase.calls
    for c in calls:
        shown = " ".join("-" if v is None else f"{v:.0f}" for v in c.latencies)
        extra = f" ERROR {c.error}" if c.error else ""
        if c.underruns_at:  # when, on the server log's clock, to read what the server did
            moments = ", ".join(f"{gap * 1000:.0f} ms at {clock(at)}" for gap, at in c.underruns_at)
            extra += f" underruns: {moments} ({c.call_sid})"
        print(f"  [{name} N={phase.n} caller {c.script.caller}] heard ms: {shown}{extra}")
    if phase.n == 1:
        trend = [c.first_reply for c in calls]
        shown = ", ".join("-" if v is None else f"{v:.0f}" for v in trend)
        known = [v for v in trend if v is not None]
        change = f"; last/first {known[-1] / known[0]:.2f}" if len(known) > 1 else ""
        print(f"{name} consecutive single calls, first reply heard (ms): {shown}{change}")
    first, every = phase.first, phase.every
    print(
        f"{name} N={phase.n}: answered {len(calls) - phase.not_answered}/{len(calls)} | "
        f"first reply heard p50={ms(p50(first))} p95={ms(p95(first))} ms (n={len(first)}) | "
        f"all turns p50={ms(p50(every))} p95={ms(p95(every))} ms (n={len(every)}) | "
        f"half-sentence replies {sum(c.half_sentence() for c in calls)}/{phase.paused_turns} | "
        f"talk-over {sum(c.talk_over() for c in calls)} | "
        f"underruns {phase.underruns} (greeting {phase.greeting_underruns}"
        + ("" if phase.server_underruns is None else f"; server {phase.server_underruns}")
        + f"), stalls {sum(c.stall_secs for c in calls):.2f}s | "
        f"stack RSS {phase.memory_total:.0f} MB | {phase.secs:.0f}s",
        flush=True,
    )
    if phase.turns:
        stages = []
        for stage in STAGES:
            values = [v for t in phase.turns if (v := t.get(stage)) is not None]
            stages.append(f"{stage} {ms(p50(values))}/{ms(p95(values))}")
        print(
            f"{name} N={phase.n} server stages p50/p95 ms ({len(phase.turns)} turns): "
            + ", ".join(stages)
        )
    memory = ", ".join(f"{label} {rss:.0f}" for label, rss in phase.memory.items())
    print(f"{name} N={phase.n} peak RSS MB: {memory}", flush=True)
    print(f"{name} N={phase.n} CPU, cores busy on average: {phase.cpu.line()}", flush=True)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def summarize(results: dict[str, dict[int, Phase]], backends: list[str], counts: list[int]) -> None:
    print("\nfirst reply heard p50 / p95 (ms), calls not answered, underruns, stack RSS (MB)")
    header = "system".ljust(22) + "".join(f"N={n}".rjust(30) for n in counts)
    print(header)
    for name, phases in results.items():
        cells = []
        for n in counts:
            ph = phases.get(n)
            cells.append(
                "-".rjust(30)
                if ph is None
                else f"{ms(p50(ph.first))}/{ms(p95(ph.first))} "
                f"na={ph.not_answered} u={ph.underruns} {ph.memory_total:.0f}".rjust(30)
            )
        print(name.ljust(22) + "".join(cells))
    pieces = []
    low, mid, high = min(counts), 4 if 4 in counts else max(counts), max(counts)
    for backend in backends:
        vox = results.get(f"voxline/{backend}", {})
        stock = results.get(f"stock/{backend}", {})
        if low in vox and mid in vox:
            v1, vm = p95(vox[low].first), p95(vox[mid].first)
            piece = f"{backend}: vox p95 N={low} {ms(v1)} N={mid} {ms(vm)} ({ratio(vm, v1):.2f}x)"
            if mid in stock:
                sm = p95(stock[mid].first)
                mem = ratio(vox[mid].memory_total, stock[mid].memory_total)
                piece += f", stock N={mid} {ms(sm)} ({ratio(vm, sm):.2f}x), mem {mem:.2f}x"
            if high in vox and high != mid:
                ph = vox[high]
                piece += f", N={high} p95 {ms(p95(ph.first))} na={ph.not_answered} u={ph.underruns}"
            pieces.append(piece)
    for backend in backends:
        vox = results.get(f"voxline/{backend}", {})
        stock = results.get(f"stock/{backend}", {})
        if mid in vox and mid in stock:
            print(
                f"{backend}: voxline {mid}-call p95 / voxline {low}-call p95 = "
                f"{ratio(p95(vox[mid].first), p95(vox[low].first)):.2f} (target <= 1.5); "
                f"/ stock {mid}-call p95 = "
                f"{ratio(p95(vox[mid].first), p95(stock[mid].first)):.2f} (target <= 0.3); "
                f"stack memory voxline/stock = "
                f"{ratio(vox[mid].memory_total, stock[mid].memory_total):.2f} (target <= 0.6)"
            )
    print("burst_calls: " + " | ".join(pieces))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=1,2, 2 turns, 2 samples")
    parser.add_argument("--calls", type=int, nargs="+", help="N values (default 1 2 4 8)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--turns", type=int, help="turns per call (default 3; quick 2)")
    parser.add_argument("--samples", type=int, help="first replies per N (default 8; quick 2)")
    parser.add_argument("--max-calls", type=int, default=8, help="voxline's max_calls")
    parser.add_argument("--underrun-ms", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--persona", type=Path, default=PERSONA, help="voxline's persona (default: the bank)"
    )
    parser.add_argument(
        "--engines",
        type=json.loads,
        default={},
        help='extra engines config for voxline as JSON, e.g. \'{"vllm": {"cpu_threads": 2}}\'',
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO"),
        help="voxline serve's log level (its output is kept in the run's folder; with "
        "VOXLINE_LOG_CONTENT=1 the callers' words are in it too)",
    )
    args = parser.parse_args()
    counts = args.calls or ([1, 2] if args.quick else [1, 2, 4, 8])
    args.turns = args.turns or (2 if args.quick else 3)
    args.samples = args.samples or (2 if args.quick else 8)
    began = time.monotonic()
    tmp = args.tmp = Path(tempfile.mkdtemp(prefix="burst_calls_"))
    clips = Clips(tmp)
    print(
        f"N={counts}, {args.turns} turns a call, {args.samples} first replies per N, "
        f"max_calls {args.max_calls}, seed {args.seed}, underrun >= {args.underrun_ms:.0f} ms; "
        f"espeak-ng voices: {', '.join(v[0] for v in VOICES)} (no other Piper voice installed)",
        flush=True,
    )

    async def run_all() -> dict[str, dict[int, Phase]]:
        results: dict[str, dict[int, Phase]] = {}
        for backend in args.backends:
            for system in args.systems:
                name = f"{system}/{backend}"
                if system == "voxline":
                    sub = tmp / name.replace("/", "_")
                    sub.mkdir()
                    start = lambda b=backend, d=sub: start_voxline_stack(  # noqa: E731
                        b, d, args.max_calls, args.persona, args.engines, args.log_level
                    )
                else:
                    start = lambda b=backend: start_stock_stack(b, args.max_calls)  # noqa: E731
                results[name] = await run_system(name, start, counts, args, clips)
        return results

    results = asyncio.run(run_all())
    print(f"total {time.monotonic() - began:.0f}s")
    summarize(results, args.backends, counts)


if __name__ == "__main__":
    main()
