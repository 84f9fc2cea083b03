"""What the server under test reports about a bench run, read from its ``/metrics``.

``/metrics`` is the one source that works against a server on another machine:
the bench scrapes it before and after each round of calls and takes the
difference. Per-stage latency comes from the server's histograms (a family with a
``stage`` label, or one per stage named after it, such as
``voxline_stt_seconds``): the percentiles are estimated from the bucket counts the
calls added, interpolating inside a bucket as Prometheus' ``histogram_quantile``
does, so they are as fine as the buckets. Memory is the largest
``process_resident_memory_bytes`` the server reports (summed over the processes it
reports). Errors are the increase of every counter whose name says ``error``;
refusals the increase of ``voxline_calls_refused``, and callers asked to say it again
(speech recognition made no words of their speech) the increase of
``voxline_not_understood``, and the gaps its phone output counted inside the bot's
speech the increase of ``voxline_audio_underruns``. A server that does not expose
a figure leaves it out; a scrape that fails leaves all of them out.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

STAGES = (
    "commit",
    "stt",
    "llm_first_token",
    "first_chunk",
    "tts_first_audio",
    "voice_to_voice",
)
"""The stages of a turn, in the order they happen (as the server's latency tracer names them)."""

METRICS_TOKEN_ENV = "VOXLINE_METRICS_TOKEN"
"""Environment variable holding the bearer token of a protected ``/metrics``."""

Buckets = dict[float, float]
"""Cumulative count per upper bound (``le``) of one histogram."""

LOOP_LAG = "voxline_event_loop_lag_seconds"
"""The server's event-loop lag histogram (``voxline/server/loop_lag.py``)."""


@dataclass
class Scrape:
    """One reading of ``/metrics``, reduced to what the bench reports."""

    stages: dict[str, Buckets] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    rss_bytes: float | None = None
    llm_kinds: set[str] = field(default_factory=set)
    calls_active: float | None = None
    loop_lag: Buckets | None = None
    """``voxline_event_loop_lag_seconds``: how late the server's event loop ran."""


def _stage_of(family: str, labels: dict[str, str]) -> str | None:
    if labels.get("stage") in STAGES:
        return labels["stage"]
    name = family.removeprefix("voxline_").removesuffix("_seconds").removesuffix("_ms")
    for stage in STAGES:
        if name in (stage, f"turn_{stage}", f"{stage}_latency", f"stage_{stage}"):
            return stage
    return None


def parse_metrics(text: str) -> Scrape:
    """The stage histograms, counters, memory and LLM kinds in a ``/metrics`` text."""
    scrape = Scrape()
    stages: dict[str, Buckets] = defaultdict(lambda: defaultdict(float))
    rss = 0.0
    rss_seen = False
    for family in text_string_to_metric_families(text):
        if family.name == LOOP_LAG:
            scrape.loop_lag = {
                float(sample.labels["le"]): sample.value
                for sample in family.samples
                if sample.name.endswith("_bucket")
            }
        elif family.type == "histogram" and family.name.startswith("voxline_"):
            for sample in family.samples:
                if not sample.name.endswith("_bucket"):
                    continue
                stage = _stage_of(family.name, sample.labels)
                if stage is None:
                    continue
                scale = 1e-3 if family.name.endswith("_ms") else 1.0
                bound = float(sample.labels["le"]) * scale
                stages[stage][bound] += sample.value
        elif family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    scrape.counters[sample.name] = (
                        scrape.counters.get(sample.name, 0.0) + sample.value
                    )
        elif family.name == "voxline_calls_active":
            scrape.calls_active = sum(sample.value for sample in family.samples)
        elif family.name == "process_resident_memory_bytes":
            for sample in family.samples:
                rss += sample.value
                rss_seen = True
        for sample in family.samples:
            if family.name.startswith("voxline_llm") and "kind" in sample.labels:
                scrape.llm_kinds.add(sample.labels["kind"])
    scrape.stages = {stage: dict(buckets) for stage, buckets in stages.items()}
    scrape.rss_bytes = rss if rss_seen else None
    return scrape


async def scrape_metrics(url: str, timeout: float = 10.0) -> Scrape | None:
    """``url``'s ``/metrics``, parsed; None when it cannot be read."""
    headers = {}
    if token := os.environ.get(METRICS_TOKEN_ENV):
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url.rstrip("/") + "/metrics", headers=headers)
        response.raise_for_status()
        return parse_metrics(response.text)
    except (httpx.HTTPError, ValueError):
        return None


def bucket_quantile(q: float, buckets: Buckets) -> float:
    """The ``q`` quantile (0..1) of a cumulative histogram, in its unit (NaN when empty).

    Linear inside the bucket that holds it, as Prometheus' ``histogram_quantile``; a
    quantile in the ``+Inf`` bucket is the largest finite bound.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class ServerFigures:
    """What the server reported about the calls between two scrapes."""

    stage_ms: dict[str, dict[str, float]]
    """Per stage: p50, p95, p99 (ms) and n (turns)."""
    errors: float | None
    refused: float | None
    rss_mb: float | None
    not_understood: float | None = None
    underruns: float | None = None
    """Gaps the server's phone output counted inside the bot's speech (greetings too)."""
    loop_lag_ms: dict[str, float] | None = None
    """The server's event-loop lag over the run: p50, p95, p99, max bound (ms) and n."""


def difference(before: Scrape | None, after: Scrape | None) -> ServerFigures:
    """The server's figures for what happened between ``before`` and ``after``."""
    if before is None or after is None:
        return ServerFigures(stage_ms={}, errors=None, refused=None, rss_mb=None)
    stage_ms: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        if stage in after.stages and (
            spread := _spread(before.stages.get(stage, {}), after.stages[stage])
        ):
            stage_ms[stage] = spread
    error_names = [name for name in after.counters if "error" in name]
    errors = (
        sum(after.counters[n] - before.counters.get(n, 0.0) for n in error_names)
        if error_names
        else None
    )
    refused = _increase(before, after, "voxline_calls_refused_total")
    rss = [s.rss_bytes for s in (before, after) if s.rss_bytes is not None]
    return ServerFigures(
        stage_ms=stage_ms,
        errors=errors,
        refused=refused,
        rss_mb=round(max(rss) / 2**20, 1) if rss else None,
        not_understood=_increase(before, after, "voxline_not_understood_total"),
        underruns=_increase(before, after, "voxline_audio_underruns_total"),
        loop_lag_ms=_lag(before, after),
    )


def _spread(before: Buckets, after: Buckets) -> dict[str, float] | None:
    """p50, p95, p99 (ms) and n of what a histogram gained between two scrapes."""
    added = {le: count - before.get(le, 0.0) for le, count in after.items()}
    n = max(added.values(), default=0.0)
    if n <= 0:
        return None
    return {
        "p50": round(bucket_quantile(0.5, added) * 1e3, 1),
        "p95": round(bucket_quantile(0.95, added) * 1e3, 1),
        "p99": round(bucket_quantile(0.99, added) * 1e3, 1),
        "n": n,
    }


def _lag(before: Scrape, after: Scrape) -> dict[str, float] | None:
    if after.loop_lag is None or (spread := _spread(before.loop_lag or {}, after.loop_lag)) is None:
        return None
    old = before.loop_lag or {}
    # The smallest bound that holds every sample the run added: the longest lag, to a bucket.
    bounds = sorted(after.loop_lag)
    top = next(
        (le for le in bounds if after.loop_lag[le] - old.get(le, 0.0) >= spread["n"]), bounds[-1]
    )
    spread["max_bound"] = top * 1e3
    return spread


def _increase(before: Scrape, after: Scrape, name: str) -> float | None:
    if name not in after.counters:
        return None
    return after.counters[name] - before.counters.get(name, 0.0)
