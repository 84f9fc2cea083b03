"""The table ``voxline bench`` prints."""

from __future__ import annotations

from voxline.bench.results import BenchReport, Phase, Side
from voxline.bench.server_stats import STAGES


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(system: str, phase: Phase) -> str:
    heard, first = phase.heard_ms, phase.first_reply_ms
    memory = "-" if phase.memory_mb is None else f"{phase.memory_mb:.0f} MB ({phase.memory_source})"
    errors = phase.errors + int(phase.server_errors or 0)
    return (
        f"{system:<14} {phase.calls:>3} {_ms(heard.p50):>6} {_ms(heard.p95):>6} "
        f"{_ms(heard.p99):>6} {heard.n:>4}  {_ms(first.p50):>6} {_ms(first.p95):>6}  "
        f"{phase.answered:>3}/{phase.placed:<3} {phase.refused:>7} {phase.underruns:>9} "
        f"{errors:>6}  {memory}"
    )


def _stages(side: Side) -> list[str]:
    lines = []
    for phase in side.phases:
        if not phase.server_stages_ms:
            continue
        cells = []
        for stage in STAGES:
            if (s := phase.server_stages_ms.get(stage)) is not None:
                cells.append(f"{stage} {_ms(s.p50)}/{_ms(s.p95)}/{_ms(s.p99)}")
        turns = max(s.n for s in phase.server_stages_ms.values())
        if (lag := phase.server_loop_lag_ms) is not None:
            cells.append(
                f"event loop lag {_ms(lag['p50'])}/{_ms(lag['p95'])}/{_ms(lag['p99'])} "
                f"(max <= {_ms(lag['max_bound'])})"
            )
        lines.append(f"  N={phase.calls} ({turns:.0f} turns): " + ", ".join(cells))
    if not lines:
        return [f"{side.system}: the server reports no per-stage latency histograms on /metrics"]
    return [f"{side.system} server stages, ms p50/p95/p99 (from /metrics histograms):", *lines]


def render(report: BenchReport) -> str:
    """The human-readable report of one run."""
    sides = [report.voxline] + ([report.stock_pipecat] if report.stock_pipecat else [])
    out = [
        f"voxline bench {report.url}: {report.turns} turn(s) a call, {report.rounds} round(s) "
        f"per N, seed {report.seed}, underrun >= {report.underrun_ms:.0f} ms",
        "",
        "voice-to-voice as heard by the callers (ms); first reply: the question all N ask at once",
        f"{'system':<14} {'N':>3} {'p50':>6} {'p95':>6} {'p99':>6} {'n':>4}  "
        f"{'1st50':>6} {'1st95':>6}  {'answered':<7} {'refused':>7} {'underruns':>9} "
        f"{'errors':>6}  memory",
    ]
    counts = [phase.calls for phase in report.voxline.phases]
    for n in counts:
        for side in sides:
            if (phase := side.phase(n)) is not None:
                out.append(_row(side.system, phase))
    for r in report.ratios:
        out.append(
            f"voxline / stock pipecat, N={r.calls}: heard p50 {_ratio(r.heard_p50)}, "
            f"p95 {_ratio(r.heard_p95)}, p99 {_ratio(r.heard_p99)}, "
            f"first reply p95 {_ratio(r.first_reply_p95)}, memory {_ratio(r.memory)}"
            + (f" (bot server alone {r.server_memory:.2f})" if r.server_memory is not None else "")
        )
    out.append("")
    for side in sides:
        backend = f" on {side.llm_backend}" if side.llm_backend else ""
        for phase in side.phases:
            extra = (
                f"half-sentence replies {phase.half_sentence_replies}/{phase.paused_utterances}, "
                f"talk-over {phase.talk_over}, greeting underruns {phase.greeting_underruns}"
            )
            if phase.server_errors is not None:
                extra += f", server errors {phase.server_errors:.0f}"
            if phase.server_refused is not None:
                extra += f", server refusals {phase.server_refused:.0f}"
            if phase.server_not_understood is not None:
                extra += f", asked to repeat {phase.server_not_understood:.0f}"
            if phase.server_underruns is not None:
                extra += f", server-counted underruns {phase.server_underruns:.0f}"
            if phase.memory_by_process_mb:
                extra += "; peak MB " + ", ".join(
                    f"{k} {v:.0f}" for k, v in phase.memory_by_process_mb.items()
                )
            out.append(f"{side.system}{backend} N={phase.calls}: {extra}")
            if phase.cpu is not None:
                out.append(
                    f"{side.system}{backend} N={phase.calls} CPU, cores busy on average: "
                    f"{phase.cpu.line()}"
                )
            for call in phase.call_reports:
                if call.error:
                    out.append(f"  caller {call.caller}: {call.error}")
    out.append("")
    out.extend(_stages(report.voxline))
    return "\n".join(out)
