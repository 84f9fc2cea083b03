"""``GET /metrics``: the server's state in Prometheus' text format.

Read at scrape time from the objects that already hold it (the Runtime's
engines and LLM backends, the admission counter), so nothing on the audio path
pays for metrics, and a scrape makes no request of its own. The LLM servers'
prefix-cache counters (vLLM's own ``/metrics``, the embedded llama.cpp server's
log) are read in the background every ``health.check_interval_secs`` by
:class:`LLMCounterRefresh`, and exported as ``voxline_llm_prefix_cache_hit_ratio``.

LLM series are labelled by names, never by URLs (a URL can carry a host name
or a key the scraper has no business seeing): ``kind`` (``llama_cpp``, ``vllm``
or ``external``), ``model`` (the served model's name) and ``personas`` (the
personas it serves, comma-separated; unique per server).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath

from loguru import logger
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voxline.bot.runtime import Runtime
from voxline.engines.llm_backend import LLMBackend
from voxline.records.metrics import records_metrics
from voxline.server.admission import Admission
from voxline.server.background import BackgroundJob
from voxline.server.call_metrics import CallMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


LLM_LABELS = ["kind", "model", "personas"]


def model_name(model: str) -> str:
    """A model as a label: its name; a local file or folder's name, not the machine's layout."""
    return PurePath(model).name if model.startswith(("/", "~", ".")) else model


def llm_labels(backend: LLMBackend) -> list[str]:
    """The label values of one LLM server's series: its kind, model name and personas."""
    return [backend.kind, model_name(backend.endpoint.model), ",".join(sorted(backend.personas))]


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
            labels=LLM_LABELS,
        )
        slots = GaugeMetricFamily(
            "voxline_llm_slots",
            "LLM requests sent at once to the server (engines.llm.max_concurrent).",
            labels=LLM_LABELS,
        )
        running = GaugeMetricFamily(
            "voxline_llm_requests_running", "LLM requests holding a slot.", labels=LLM_LABELS
        )
        waiting = GaugeMetricFamily(
            "voxline_llm_requests_waiting", "LLM requests waiting for a slot.", labels=LLM_LABELS
        )
        wait_p95 = GaugeMetricFamily(
            "voxline_llm_slot_wait_p95_seconds",
            "95th percentile of recent waits for an LLM slot.",
            labels=LLM_LABELS,
        )
        for backend in self._runtime.llm.backends:
            labels = llm_labels(backend)
            if backend.prefix_cache_hit_ratio is not None:
                hit_ratio.add_metric(labels, backend.prefix_cache_hit_ratio)
            slots.add_metric(labels, backend.cap.max_concurrent)
            running.add_metric(labels, backend.cap.running)
            waiting.add_metric(labels, backend.cap.waiting)
            wait_p95.add_metric(labels, _p95(backend.cap.wait_secs))
        yield from (hit_ratio, slots, running, waiting, wait_p95)

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
            label = [model_name(name)]
            batch_size.add_metric(label, statistics.fmean(r.size for r in records))
            queue_p95.add_metric(label, _p95(r.max_queue_wait_secs for r in records))
            run_p95.add_metric(label, _p95(r.run_secs for r in records))
        yield from (batch_size, queue_p95, run_p95)
        yield from records_metrics(self._runtime.calls)
        yield from _refusals_and_errors(self._runtime)
        yield from _tts_metrics(self._runtime)
        yield from _turn_metrics(self._runtime)


ERROR_KINDS = ("stt", "llm", "tts", "tool", "transport", "pipeline")
"""The ``kind`` label of ``voxline_errors_total``: always present, 0 until one happens."""


def _refusals_and_errors(runtime: Runtime) -> Iterator[Metric]:
    """Whisper's overload refusals and second decodings, and every call's errors by kind."""
    refused = CounterMetricFamily(
        "voxline_whisper_refused",
        "Utterances Whisper refused because its queue was full (overload).",
        labels=["model"],
    )
    decoded_again = CounterMetricFamily(
        "voxline_whisper_decoded_again",
        "Whisper windows decoded a second time in the full 30 s window because the short "
        "one looped or said a phrase twice.",
        labels=["model"],
    )
    for name, engine in runtime.whisper_engines.items():
        refused.add_metric([model_name(name)], engine.refused)
        decoded_again.add_metric([model_name(name)], engine.decoded_again)
    errors = CounterMetricFamily(
        "voxline_errors",
        "Errors in calls, by kind: stt, llm, tts (the stage that failed), tool (a tool "
        "call's error result), transport, pipeline (any other processor).",
        labels=["kind"],
    )
    counts = runtime.errors
    for kind in sorted(set(ERROR_KINDS) | set(counts)):
        errors.add_metric([kind], counts.get(kind, 0))
    yield from (refused, decoded_again, errors)


RTF_WINDOW = 200
"""Recent synthesized pieces over which ``voxline_tts_real_time_factor`` is taken."""


def _tts_metrics(runtime: Runtime) -> Iterator[Metric]:
    """Piper voices: real-time factor (recent and cumulative seconds), refusals and lines
    played from memory."""
    rtf = GaugeMetricFamily(
        "voxline_tts_real_time_factor",
        f"Seconds of synthesis per second of audio over the last {RTF_WINDOW} pieces "
        "(below 1: faster than real time).",
        labels=["voice"],
    )
    synth = CounterMetricFamily(
        "voxline_tts_synthesis_seconds", "Seconds spent synthesizing speech.", labels=["voice"]
    )
    audio = CounterMetricFamily(
        "voxline_tts_audio_seconds", "Seconds of speech synthesized.", labels=["voice"]
    )
    refused = CounterMetricFamily(
        "voxline_tts_refused",
        "Syntheses refused because the voice's queue was full (overload).",
        labels=["voice"],
    )
    remembered = CounterMetricFamily(
        "voxline_tts_remembered_lines",
        "Fixed lines (greeting, phrases) played from memory instead of synthesized again.",
        labels=["voice"],
    )
    kept = GaugeMetricFamily(
        "voxline_tts_lines_kept",
        "Fixed lines whose audio the voice keeps (spoken whole once).",
        labels=["voice"],
    )
    for name, (kept_lines, played) in runtime.remembered_lines.items():
        remembered.add_metric([model_name(name)], played)
        kept.add_metric([model_name(name)], kept_lines)
    for name, engine in runtime.piper_engines.items():
        label = [model_name(name)]
        recent = list(engine.records)[-RTF_WINDOW:]
        spoken = sum(record.audio_secs for record in recent)
        if spoken > 0:
            busy = sum(record.ended_at - record.started_at for record in recent)
            rtf.add_metric(label, busy / spoken)
        synth.add_metric(label, engine.synthesis_secs_total)
        audio.add_metric(label, engine.audio_secs_total)
        refused.add_metric(label, engine.refused)
    yield from (rtf, synth, audio, refused, remembered, kept)


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
    prefills = CounterMetricFamily(
        "voxline_prefills",
        "The caller's words so far, sent to the LLM server while they spoke "
        "(turn.speculate, when Whisper and the server had nothing else to do).",
    )
    prefills.add_metric([], counters.prefills)
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
    not_understood = CounterMetricFamily(
        "voxline_not_understood",
        "Caller speech of a second or more that speech recognition made no words of; "
        "the bot asked the caller to say it again.",
    )
    not_understood.add_metric([], counters.not_understood)
    decisions = CounterMetricFamily(
        "voxline_end_of_turn_decisions", "End-of-turn model decisions.", labels=["complete"]
    )
    decisions.add_metric(["true"], counters.decisions_complete)
    decisions.add_metric(["false"], counters.decisions_incomplete)
    overruled = CounterMetricFamily(
        "voxline_end_of_turn_overruled",
        "End-of-turn model verdicts of a finished turn set aside because the caller's "
        "words so far stop mid-sentence (turn.mid_sentence_waits).",
    )
    overruled.add_metric([], counters.decisions_overruled)
    decision_p95 = GaugeMetricFamily(
        "voxline_end_of_turn_decision_p95_seconds",
        "95th percentile of recent end-of-turn decisions, queue included.",
    )
    decision_p95.add_metric([], _p95(counters.decision_secs))
    yield from (
        speculations,
        prefills,
        commits,
        barge_ins,
        overheard,
        not_understood,
        decisions,
        overruled,
        decision_p95,
    )


def render_metrics(registry: CollectorRegistry) -> bytes:
    """Every metric as it stands now: no I/O (the LLM counters are refreshed apart)."""
    return generate_latest(registry)


class LLMCounterRefresh(BackgroundJob):
    """Reads every LLM server's prefix-cache counters in the background, on an interval.

    Once at :meth:`start`, then every ``interval_secs`` until :meth:`stop`: a scrape of voxline's
    ``/metrics`` only renders what the last refresh read, so scrapers, however
    many and however often, cost the LLM servers nothing.

    Args:
        runtime: whose LLM servers to read.
        interval_secs: time between refreshes.
    """

    def __init__(self, runtime: Runtime, interval_secs: float):
        self._runtime = runtime
        self.interval_secs = interval_secs
        self.refreshes = 0
        self._failing = False

    async def refresh(self) -> None:
        """Read every server's counters once now."""
        for backend in self._runtime.llm.backends:
            await backend.prefix_cache_counters()
        self.refreshes += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                if self._failing:
                    logger.info("LLM prefix-cache counters: read again")
                self._failing = False
            except Exception as exc:  # a failed read must not end the refreshing
                if not self._failing:  # one line when it starts failing, not one per read
                    logger.warning(f"LLM prefix-cache counters not read: {type(exc).__name__}")
                self._failing = True
            await asyncio.sleep(self.interval_secs)  # the refresh interval, not a sync


METRICS_TOKEN_ENV = "VOXLINE_METRICS_TOKEN"


@dataclass(frozen=True)
class MetricsToken:
    """The bearer token ``/metrics`` asks for; None: the page is open (the default).

    The token comes from the environment only (``VOXLINE_METRICS_TOKEN``), never from
    ``voxline.yaml``, like every other secret.
    """

    token: str | None = None

    @classmethod
    def from_environment(cls) -> MetricsToken:
        """``$VOXLINE_METRICS_TOKEN``, if set and not empty."""
        return cls(os.environ.get(METRICS_TOKEN_ENV, "").strip() or None)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value may read the metrics."""
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())


def metrics_registry(runtime: Runtime, admission: Admission) -> CollectorRegistry:
    """A registry of this server's own metrics (not the process-global default).

    Besides what is read at scrape time, it holds the stage histograms and call
    counters of a :class:`~voxline.server.call_metrics.CallMetrics`, which listens to
    the Runtime's call events from now on.
    """
    registry = CollectorRegistry()
    registry.register(VoxlineCollector(runtime, admission))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU seconds, fds
    runtime.calls.add_listener(CallMetrics(registry, runtime.errors))
    return registry
