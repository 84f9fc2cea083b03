"""The records writer's counters as Prometheus metrics (``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from voxline.bot.call_events import CallEvents
from voxline.records.writer import RecordWriter


def records_metrics(calls: CallEvents) -> Iterator[Metric]:
    """Records waiting, written, dropped and failed writes, if calls are recorded.

    ``voxline_records_waiting`` above 0 for long means the database is slow or
    away; ``voxline_records_dropped_total`` counts records lost for good.
    """
    writer = next((item for item in calls.listeners if isinstance(item, RecordWriter)), None)
    if writer is None:
        return
    waiting = GaugeMetricFamily(
        "voxline_records_waiting", "Call records not written yet (the database is slow or away)."
    )
    waiting.add_metric([], writer.waiting)
    up = GaugeMetricFamily(
        "voxline_records_database_up", "1 when the last write to the records database worked."
    )
    up.add_metric([], 1 if writer.database_up else 0)
    yield from (waiting, up)
    for name, value, text in (
        ("voxline_records_written", writer.written, "Call records written."),
        (
            "voxline_records_dropped",
            writer.dropped,
            "Call records given up (too many waiting, or refused by the database).",
        ),
        (
            "voxline_records_write_errors",
            writer.write_errors,
            "Failed writes to the records database (each retry counts); a full disk too.",
        ),
    ):
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], value)
        yield counter
