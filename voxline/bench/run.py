"""One bench run: every N against the server at the URL, then (optionally) stock pipecat.

For each N in ``calls`` the bench places ``rounds`` bursts of N simultaneous
calls (:func:`voxline.bench.calls.burst`), each call ``turns`` turns long.
Callers are numbered across rounds and N, so with the same seed every system
hears the same callers say the same things with the same pauses. Before the
next round it waits until the server reports no call in progress.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voxline.bench.callers import Clips, script
from voxline.bench.calls import Call, Line, burst
from voxline.bench.results import (
    BenchReport,
    Phase,
    Side,
    Spread,
    StageSpread,
    call_report,
    ratios,
)
from voxline.bench.server_stats import ServerFigures, difference, scrape_metrics
from voxline.bench.stack_usage import CpuUse, StackUsage, listening_pid
from voxline.bench.stock import StockStack

METRICS_POLL_SECS = 1.0
"""How often ``/metrics`` is read for memory and for calls still in progress."""
SETTLE_TIMEOUT_SECS = 30.0
"""The longest wait for the server to end the last round's calls."""


@dataclass(frozen=True)
class BenchSettings:
    """What one run does (the command line, validated)."""

    url: str
    auth_token: str
    calls: tuple[int, ...]
    turns: int
    rounds: int
    seed: int
    underrun_ms: float
    number: str
    webhook_url: str | None
    baseline_pipecat: bool
    baseline_llm: str
    persona: Path


class MetricsWatch:
    """Reads ``/metrics`` every second during a phase: the largest RSS, calls in progress."""

    def __init__(self, url: str):
        self.url = url
        self.peak_rss: float | None = None
        self.calls_active: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            scrape = await scrape_metrics(self.url)
            if scrape is not None:
                self.calls_active = scrape.calls_active
                if scrape.rss_bytes is not None:
                    self.peak_rss = max(self.peak_rss or 0.0, scrape.rss_bytes / 2**20)
            await asyncio.sleep(METRICS_POLL_SECS)  # the polling interval, not a sync

    def start(self) -> None:
        """Start reading."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def settle(url: str) -> None:
    """Wait until the server reports no call in progress (or it reports none at all)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECS
    while time.monotonic() < deadline:
        scrape = await scrape_metrics(url)
        if scrape is None or not scrape.calls_active:
            return
        await asyncio.sleep(0.25)  # polling the server's gauge


def summarize(
    n: int,
    calls: list[Call],
    figures: ServerFigures,
    memory: tuple[float | None, str, dict[str, float]],
    secs: float,
    cpu: CpuUse | None = None,
) -> Phase:
    """One phase's report from its calls and what the server said."""
    every = [v for c in calls for v in c.latencies if v is not None]
    first = [c.first_reply for c in calls if c.first_reply is not None]
    peak, source, by_process = memory
    return Phase(
        calls=n,
        placed=len(calls),
        heard_ms=Spread.of(every),
        first_reply_ms=Spread.of(first),
        answered=sum(c.answered for c in calls),
        refused=sum(c.refused for c in calls),
        errors=sum(c.error is not None and not c.refused for c in calls),
        underruns=sum(len(c.underruns) for c in calls),
        greeting_underruns=sum(len(c.greeting_underruns) for c in calls),
        half_sentence_replies=sum(c.half_sentence() for c in calls),
        paused_utterances=sum(c.script.paused_turns() for c in calls),
        talk_over=sum(c.talk_over() for c in calls),
        server_stages_ms={k: StageSpread(**v) for k, v in figures.stage_ms.items()},
        server_errors=figures.errors,
        server_refused=figures.refused,
        server_not_understood=figures.not_understood,
        server_underruns=figures.underruns,
        server_loop_lag_ms=figures.loop_lag_ms,
        memory_mb=None if peak is None else round(peak, 1),
        memory_source=source,
        memory_by_process_mb={k: round(v, 1) for k, v in by_process.items()},
        cpu=cpu,
        secs=round(secs, 1),
        call_reports=[call_report(c) for c in calls],
    )


async def run_side(
    system: str,
    line: Line,
    roots: list[int],
    settings: BenchSettings,
    clips: Clips,
    progress: Callable[[str], None],
) -> Side:
    """Every N of ``settings`` against one system; ``roots``: its local processes, if known."""
    phases = []
    caller = 0
    for n in settings.calls:
        began = time.monotonic()
        usage = StackUsage(roots).start() if roots else None
        watch = MetricsWatch(line.url)
        watch.start()
        before = await scrape_metrics(line.url)
        calls: list[Call] = []
        try:
            for _ in range(settings.rounds):
                scripts = [script(caller + i, settings.turns, settings.seed) for i in range(n)]
                caller += n
                for s in scripts:  # made before the calls: espeak-ng's time is not theirs
                    for u in s.utterances:
                        await asyncio.to_thread(clips.get, u, s.voice)
                calls += await burst(line, scripts, clips, settings.underrun_ms / 1000)
                await settle(line.url)
        finally:
            await watch.stop()
            if usage is not None:
                usage.stop()
        figures = difference(before, await scrape_metrics(line.url))
        if usage is not None:
            measured = (usage.peak_total, "psutil", usage.by_label())
        elif watch.peak_rss is not None or figures.rss_mb is not None:
            peak = max(v for v in (watch.peak_rss, figures.rss_mb) if v is not None)
            measured = (peak, "metrics", {})
        else:
            measured = (None, "none", {})
        cpu = None if usage is None else usage.cpu()
        phase = summarize(n, calls, figures, measured, time.monotonic() - began, cpu)
        progress(
            f"{system} N={n}: heard p50={phase.heard_ms.p50} p95={phase.heard_ms.p95} ms, "
            f"answered {phase.answered}/{phase.placed}, {phase.secs:.0f} s"
        )
        phases.append(phase)
    return Side(system=system, url=line.url, phases=phases)


def baseline_backend(settings: BenchSettings, kinds: set[str]) -> str:
    """The stock bot's LLM server kind: as asked, or the kind the server reports."""
    if settings.baseline_llm != "auto":
        return settings.baseline_llm
    return "vllm" if kinds == {"vllm"} else "llama_cpp"


async def run_bench(settings: BenchSettings, progress: Callable[[str], None]) -> BenchReport:
    """The whole run: the server at the URL, then stock pipecat if asked.

    Raises:
        voxline.bench.callers.SpeechError: espeak-ng is missing or failed.
        voxline.bench.stock.StockStackError: the stock bot could not be started.
    """
    with tempfile.TemporaryDirectory(prefix="voxline-bench-") as tmp:
        clips = Clips(Path(tmp))
        line = Line(settings.url, settings.auth_token, settings.number, settings.webhook_url)
        pid = listening_pid(settings.url)
        first = await scrape_metrics(settings.url)
        kinds = first.llm_kinds if first is not None else set()
        voxline = await run_side("voxline", line, [pid] if pid else [], settings, clips, progress)
        voxline.llm_backend = ",".join(sorted(kinds)) or None
        report = BenchReport(
            url=settings.url,
            turns=settings.turns,
            rounds=settings.rounds,
            seed=settings.seed,
            underrun_ms=settings.underrun_ms,
            voxline=voxline,
        )
        if not settings.baseline_pipecat:
            return report
        backend = baseline_backend(settings, kinds)
        progress(f"starting stock pipecat on {backend} (models load per call)")
        stack = StockStack(settings.persona, backend, max(settings.calls))
        await stack.start()
        try:
            stock_line = Line(stack.url, settings.auth_token, settings.number)
            stock = await run_side(
                "stock pipecat", stock_line, stack.roots, settings, clips, progress
            )
        finally:
            await stack.stop()
        stock.llm_backend = backend
        report.stock_pipecat = stock
        report.ratios = ratios(voxline, stock)
        return report
