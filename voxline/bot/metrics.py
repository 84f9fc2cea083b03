"""``GET /metrics``: the server's state in Prometheus' text format.

Read at scrape time from the objects that already hold it (the Runtime's
engines and LLM backends, the admission counter), so nothing on the audio path
pays for metrics. The LLM servers' prefix-cache counters are fetched first (vLLM's
own ``/metrics``, the embedded llama.cpp server's log) and exported as
``voxline_llm_prefix_cache_hit_ratio`` per server.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voxline.bot.admission import Admission
from voxline.bot.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _p95(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


class VoxlineCollector(Collector):
    """Collects calls, LLM backends and shared engine batches for one server."""

    def __init__(self, runtime: Runtime, admission: Admission):
        self._runtime = runtime
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family from the current state."""
        calls = GaugeMetricFamily("voxline_calls_active", "Calls in progress.")
        calls.add_metric([], self._admission.active)
        yield calls
        refused = CounterMetricFamily("voxline_calls_refused", "Calls refused at capacity.")
        refused.add_metric([], self._admission.refused)
        yield refused

        hit_ratio = GaugeMetricFamily(
            "voxline_llm_prefix_cache_hit_ratio",
            "Share of prompt tokens the LLM server served from its prefix cache.",
            labels=["server", "kind"],
        )
        running = GaugeMetricFamily(
            "voxline_llm_requests_running", "LLM requests holding a slot.", labels=["server"]
        )
        waiting = GaugeMetricFamily(
            "voxline_llm_requests_waiting", "LLM requests waiting for a slot.", labels=["server"]
        )
        wait_p95 = GaugeMetricFamily(
            "voxline_llm_slot_wait_p95_seconds",
            "95th percentile of recent waits for an LLM slot.",
            labels=["server"],
        )
        for backend in self._runtime.llm_backends:
            server = backend.endpoint.base_url
            if backend.prefix_cache_hit_ratio is not None:
                hit_ratio.add_metric([server, backend.kind], backend.prefix_cache_hit_ratio)
            running.add_metric([server], backend.cap.running)
            waiting.add_metric([server], backend.cap.waiting)
            wait_p95.add_metric([server], _p95(backend.cap.wait_secs))
        yield from (hit_ratio, running, waiting, wait_p95)

        batch_size = GaugeMetricFamily(
            "voxline_whisper_batch_size_mean",
            "Mean utterances per Whisper batch, recent batches.",
            labels=["model"],
        )
        queue_p95 = GaugeMetricFamily(
            "voxline_whisper_queue_wait_p95_seconds",
            "95th percentile of recent Whisper queue waits.",
            labels=["model"],
        )
        run_p95 = GaugeMetricFamily(
            "voxline_whisper_batch_run_p95_seconds",
            "95th percentile of recent Whisper batch run times.",
            labels=["model"],
        )
        for name, engine in self._runtime.whisper_engines.items():
            records = list(engine.batch_records)
            if not records:
                continue
            batch_size.add_metric([name], statistics.fmean(r.size for r in records))
            queue_p95.add_metric([name], _p95(r.max_queue_wait_secs for r in records))
            run_p95.add_metric([name], _p95(r.run_secs for r in records))
        yield from (batch_size, queue_p95, run_p95)
        yield from _turn_metrics(self._runtime)


def _turn_metrics(runtime: Runtime) -> Iterator[Metric]:
    """Speculations, commits, barge-ins and end-of-turn decisions of every call."""
    counters = runtime.turn_counters
    speculations = CounterMetricFamily(
        "voxline_speculations",
        "Replies started before the caller's turn was committed, by outcome: started, "
        "cancelled (the caller went on), reused (the committed turn's reply).",
        labels=["outcome"],
    )
    speculations.add_metric(["started"], counters.speculations)
    speculations.add_metric(["cancelled"], counters.speculations_cancelled)
    speculations.add_metric(["reused"], counters.speculations_reused)
    commits = CounterMetricFamily(
        "voxline_turn_commits", "Caller turns committed, by what ended them.", labels=["reason"]
    )
    commits.add_metric(["model"], counters.commits_by_model)
    commits.add_metric(["silence"], counters.commits_by_silence)
    commits.add_metric(["question"], counters.commits_by_question)
    commits.add_metric(["sentence"], counters.commits_by_sentence)
    barge_ins = CounterMetricFamily("voxline_barge_ins", "Times a caller interrupted the bot.")
    barge_ins.add_metric([], counters.barge_ins)
    overheard = CounterMetricFamily(
        "voxline_overheard", "Caller sounds over the bot that did not interrupt it."
    )
    overheard.add_metric([], counters.overheard)
    decisions = CounterMetricFamily(
        "voxline_end_of_turn_decisions", "End-of-turn model decisions.", labels=["complete"]
    )
    decisions.add_metric(["true"], counters.decisions_complete)
    decisions.add_metric(["false"], counters.decisions_incomplete)
    decision_p95 = GaugeMetricFamily(
        "voxline_end_of_turn_decision_p95_seconds",
        "95th percentile of recent end-of-turn decisions, queue included.",
    )
    decision_p95.add_metric([], _p95(counters.decision_secs))
    yield from (speculations, commits, barge_ins, overheard, decisions, decision_p95)


async def render_metrics(runtime: Runtime, registry: CollectorRegistry) -> bytes:
    """Refresh the LLM servers' cache counters, then render every metric."""
    for backend in runtime.llm_backends:
        await backend.prefix_cache_counters()
    return generate_latest(registry)


def metrics_registry(runtime: Runtime, admission: Admission) -> CollectorRegistry:
    """A registry of this server's own metrics (not the process-global default)."""
    registry = CollectorRegistry()
    registry.register(VoxlineCollector(runtime, admission))
    return registry
