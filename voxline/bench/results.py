"""The bench's results as pydantic models: what ``--json`` prints and the table is made of."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, Field

from voxline.bench.calls import Call
from voxline.bench.stack_usage import STOCK_SERVER, VOXLINE_SERVER, CpuUse


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Spread(BaseModel):
    """p50 / p95 / p99 of some latencies (ms) and how many there were."""

    p50: float | None
    p95: float | None
    p99: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (the median is the true median, the rest nearest rank)."""
        return cls(
            p50=round(statistics.median(values), 1) if values else None,
            p95=percentile(values, 0.95),
            p99=percentile(values, 0.99),
            n=len(values),
        )


class StageSpread(BaseModel):
    """One server stage over the phase's turns, from the server's histograms."""

    p50: float
    p95: float
    p99: float
    n: float


class CallReport(BaseModel):
    """One call as its caller heard it."""

    caller: int
    call_sid: str
    voice: str
    heard_ms: list[float | None] = Field(
        description="Voice-to-voice per turn as heard; null: no answer, or the bot spoke "
        "during the caller's words."
    )
    refused: bool
    error: str | None
    underruns_ms: list[float]
    greeting_underruns_ms: list[float]


class Phase(BaseModel):
    """N callers at once (one or more rounds) against one system."""

    calls: int = Field(description="N: callers placed at the same moment.")
    placed: int
    heard_ms: Spread = Field(description="Voice-to-voice as heard, every turn of every call.")
    first_reply_ms: Spread = Field(description="The answer to the question all N ask at once.")
    answered: int
    refused: int
    errors: int = Field(description="Calls that failed on the caller's side (not refusals).")
    underruns: int = Field(description="Stalls inside replies of at least --underrun-ms.")
    greeting_underruns: int
    half_sentence_replies: int
    paused_utterances: int
    talk_over: int
    server_stages_ms: dict[str, StageSpread] = Field(
        default_factory=dict, description="Per stage, from the server's /metrics histograms."
    )
    server_errors: float | None = Field(description="Increase of the server's error counters.")
    server_refused: float | None = Field(description="Increase of voxline_calls_refused.")
    server_not_understood: float | None = Field(
        default=None,
        description="Increase of voxline_not_understood: turns whose speech recognition "
        "made no words, answered with the persona's not_understood line.",
    )
    server_underruns: float | None = Field(
        default=None,
        description="Increase of voxline_audio_underruns: gaps the server's phone output "
        "counted inside the bot's speech, greetings included (its model of the playout).",
    )
    server_loop_lag_ms: dict[str, float] | None = Field(
        default=None,
        description="The server's event-loop lag over the phase (voxline_event_loop_lag_seconds): "
        "p50, p95, p99 and max_bound (the bucket that holds the longest), ms; n samples.",
    )
    memory_mb: float | None = Field(description="Peak memory of the whole stack (MB).")
    memory_source: str = Field(
        description="psutil: RSS of the listening process and its children, sampled every "
        "0.25 s; metrics: process_resident_memory_bytes on /metrics; none: not known."
    )
    memory_by_process_mb: dict[str, float] = Field(default_factory=dict)
    cpu: CpuUse | None = Field(
        default=None,
        description="Cores busy on average over the phase, per kind of process of the stack "
        "(psutil; only when the server runs on this machine), and on the whole machine.",
    )
    secs: float
    call_reports: list[CallReport]


class Side(BaseModel):
    """One system under test through every N."""

    system: str
    url: str
    llm_backend: str | None = None
    phases: list[Phase]

    def phase(self, n: int) -> Phase | None:
        """The phase with N callers, if it ran."""
        return next((p for p in self.phases if p.calls == n), None)


class Ratios(BaseModel):
    """voxline / stock pipecat at one N (below 1: voxline is faster or smaller)."""

    calls: int
    heard_p50: float | None
    heard_p95: float | None
    heard_p99: float | None
    first_reply_p95: float | None
    memory: float | None = Field(description="Peak memory of the whole stacks.")
    server_memory: float | None = Field(
        default=None,
        description="Peak memory of the bot servers alone: voxline serve vs the stock "
        "pipecat bot, without the LLM server both stacks run the same way.",
    )


class BenchReport(BaseModel):
    """Everything ``voxline bench`` measured in one run."""

    url: str
    turns: int
    rounds: int
    seed: int
    underrun_ms: float
    voxline: Side
    stock_pipecat: Side | None = None
    ratios: list[Ratios] = Field(default_factory=list)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded, or None when either is unknown or ``b`` is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def ratios(voxline: Side, stock: Side) -> list[Ratios]:
    """voxline / stock at every N both ran."""
    found = []
    for phase in voxline.phases:
        other = stock.phase(phase.calls)
        if other is None:
            continue
        found.append(
            Ratios(
                calls=phase.calls,
                heard_p50=ratio(phase.heard_ms.p50, other.heard_ms.p50),
                heard_p95=ratio(phase.heard_ms.p95, other.heard_ms.p95),
                heard_p99=ratio(phase.heard_ms.p99, other.heard_ms.p99),
                first_reply_p95=ratio(phase.first_reply_ms.p95, other.first_reply_ms.p95),
                memory=ratio(phase.memory_mb, other.memory_mb),
                server_memory=ratio(
                    phase.memory_by_process_mb.get(VOXLINE_SERVER),
                    other.memory_by_process_mb.get(STOCK_SERVER),
                ),
            )
        )
    return found


def call_report(call: Call) -> CallReport:
    """One call's figures for the report."""
    return CallReport(
        caller=call.script.caller,
        call_sid=call.call_sid,
        voice=call.script.voice[0],
        heard_ms=call.latencies,
        refused=call.refused,
        error=call.error,
        underruns_ms=[round(g * 1e3) for g in call.underruns],
        greeting_underruns_ms=[round(g * 1e3) for g in call.greeting_underruns],
    )
