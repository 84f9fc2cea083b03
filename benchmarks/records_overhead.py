"""Call records on vs off: voice-to-voice as heard, measured by ``voxline bench`` (issue 17).

The target: recording costs nothing audible, that is the heard voice-to-voice p50 with
call records on (SQLite, and PostgreSQL) within 5 % of the p50 with records off.

One run starts, on loopback:

* a throwaway PostgreSQL cluster (:class:`tests.servers.PostgresCluster`, fsync off);
* three ``voxline serve`` processes with the bank persona (personas/bank_support.yaml)
  on the llama.cpp backend, ``max_calls: 8``, which differ only in their records:
  **off** (``records: {enabled: false}``), **sqlite** (no ``records_url``: the default
  SQLite file, here in the run's temporary folder) and **postgres** (``records_url`` the
  cluster's).

Each server first takes one warm-up call (one turn, not counted: a fresh llama.cpp
server's first call can take seconds longer). Then, for every round and every N of
``--calls`` (default 1 and 4 callers at once), ``voxline bench URL --json --turns 3
--calls N --seed S`` runs against the three servers one after another, in an order
shuffled anew for each round and N; the seed is the same for the three (the same callers
say the same things with the same pauses) and differs between rounds. Every turn's heard
voice-to-voice (the caller's last voiced frame sent -> the first voiced bot frame heard;
the ``heard_ms`` of each call in the bench's JSON) is collected per mode and N.

Printed per N: each mode's p50, p95, n and unanswered turns; for sqlite and postgres
the ratio of their p50 to off's, a 95 % bootstrap interval of that ratio (turns
resampled), the median of the paired differences (the same caller's same turn in the
same round, on minus off) and whether the ratio is within 1.05; each mode's server stage
p50s (the ``voxline_turn_stage_seconds`` histograms of its ``/metrics``, summed over
the runs, as fine as the buckets) and its records counters. The last line is the
summary::

    records_overhead: N=1 off p50=...ms sqlite p50=...ms (x.xx) postgres p50=...ms (x.xx) | N=4 ...

Every process it starts (the servers, by process id, and the cluster) is stopped on the
way out, on an error, Ctrl-C or SIGTERM too. Run it alone (the figures are only as quiet
as the machine); about 13 minutes on a 2-core CPU with the defaults (2 rounds; one round
of both N is about 6 minutes, the start and the warm-up calls 1.5)::

    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.records_overhead
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.records_overhead --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import p50, p95, serve_voxline  # noqa: E402
from tests.servers import PostgresCluster, ServerProcess  # noqa: E402
from voxline.bench.results import BenchReport  # noqa: E402
from voxline.bench.server_stats import (  # noqa: E402
    STAGES,
    Buckets,
    Scrape,
    bucket_quantile,
    scrape_metrics,
)

VOXLINE = str(Path(sys.executable).parent / "voxline")
PERSONA = ROOT / "personas" / "bank_support.yaml"
TOKEN = "records-overhead-benchmark-token"
MODES = ("off", "sqlite", "postgres")
RECORDED = ("sqlite", "postgres")
TARGET = 1.05
"""The largest p50 ratio records on / off the issue accepts."""
BENCH_TIMEOUT_SECS = 900.0
"""The longest one ``voxline bench`` run may take."""
BOOTSTRAP = 2000
RECORD_COUNTERS = (
    ("written", "voxline_records_written_total"),
    ("write errors", "voxline_records_write_errors_total"),
    ("dropped", "voxline_records_dropped_total"),
)


@dataclass
class Figures:
    """What one mode's server showed at one N, over every round."""

    heard: list[float] = field(default_factory=list)
    by_turn: dict[tuple[int, int, int], float] = field(default_factory=dict)
    """Heard ms per (round, caller, turn): the pairs of the paired differences."""
    unanswered: int = 0
    stages: dict[str, Buckets] = field(default_factory=lambda: defaultdict(dict))


def add_buckets(total: Buckets, before: Buckets, after: Buckets) -> None:
    """Add the counts ``after`` has over ``before`` to ``total`` (cumulative buckets)."""
    for bound, count in after.items():
        total[bound] = total.get(bound, 0.0) + count - before.get(bound, 0.0)


def scrape(url: str) -> Scrape | None:
    """The server's ``/metrics``, parsed (None if it could not be read)."""
    return asyncio.run(scrape_metrics(url))


# --- processes ------------------------------------------------------------------------------


def _terminated(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)  # runs every ``finally``: the servers and cluster stop


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started cluster, removed (stopped, its folder deleted) on the way out."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def servers(tmp: Path, postgres_url: str) -> Iterator[dict[str, str]]:
    """The three ``voxline serve`` processes, ready; yields each mode's URL.

    Started together and waited for together; each stopped by its process id on the way
    out (a server that fails to start stops the ones already started).
    """
    records: dict[str, dict[str, Any]] = {
        "off": {"records": {"enabled": False}},
        "sqlite": {},  # the default: $XDG_DATA_HOME/voxline/records.sqlite3 under its folder
        "postgres": {"records_url": postgres_url},
    }
    started: dict[str, tuple[ServerProcess, str]] = {}
    try:
        for mode in MODES:
            folder = tmp / mode
            folder.mkdir()
            started[mode] = serve_voxline(
                folder,
                numbers={},
                default_persona=PERSONA,
                token=TOKEN,
                max_calls=8,
                engines={"llm": {"backend": "llama_cpp"}},
                wait=False,
                **records[mode],
            )
        for mode, (server, url) in started.items():
            server.wait_ready(240)
            log(f"{mode}: voxline serve ready on {url} (pid {server.process.pid})")
        yield {mode: url for mode, (_, url) in started.items()}
    finally:
        for mode, (server, _) in started.items():
            code = server.stop()
            if code not in (0, -signal.SIGTERM):
                log(f"{mode}: voxline serve exited with {code}:\n" + server.output[-2000:])


def log(line: str) -> None:
    print(f"records_overhead: {line}", file=sys.stderr, flush=True)


# --- one bench run --------------------------------------------------------------------------


def bench(url: str, calls: int, turns: int, seed: int) -> BenchReport:
    """``voxline bench URL --json`` with N callers at once; its report.

    Raises:
        RuntimeError: the bench failed (its exit code and stderr in the message).
    """
    command = [VOXLINE, "bench", url, "--json", "--turns", str(turns), "--calls", str(calls)]
    command += ["--seed", str(seed)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "TWILIO_AUTH_TOKEN": TOKEN, "VOXLINE_OFFLINE": "1"},
        timeout=BENCH_TIMEOUT_SECS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"voxline bench {url} --calls {calls} --seed {seed} exited with "
            f"{result.returncode}:\n{result.stderr[-3000:]}"
        )
    return BenchReport.model_validate_json(result.stdout)


def measure(
    url: str, calls: int, turns: int, seed: int, round_: int, figures: Figures
) -> tuple[float | None, int, float]:
    """One bench run into ``figures``; returns its heard p50, turns heard and seconds."""
    began = time.monotonic()
    before = scrape(url)
    report = bench(url, calls, turns, seed)
    after = scrape(url)
    heard: list[float] = []
    for phase in report.voxline.phases:
        for call in phase.call_reports:
            for turn, value in enumerate(call.heard_ms):
                if value is None:
                    figures.unanswered += 1
                    continue
                heard.append(value)
                figures.by_turn[(round_, call.caller, turn)] = value
    figures.heard += heard
    if before is not None and after is not None:
        for stage, buckets in after.stages.items():
            add_buckets(figures.stages[stage], before.stages.get(stage, {}), buckets)
    return (statistics.median(heard) if heard else None), len(heard), time.monotonic() - began


# --- figures --------------------------------------------------------------------------------


def ratio_interval(on: list[float], off: list[float], rng: random.Random) -> tuple[float, float]:
    """A 95 % bootstrap interval of median(on) / median(off), each side's turns resampled."""
    ratios = sorted(
        statistics.median(rng.choices(on, k=len(on)))
        / statistics.median(rng.choices(off, k=len(off)))
        for _ in range(BOOTSTRAP)
    )
    return ratios[int(0.025 * BOOTSTRAP)], ratios[int(0.975 * BOOTSTRAP) - 1]


def paired_difference(on: Figures, off: Figures) -> tuple[float | None, int]:
    """Median of on - off over the turns both heard (same round, caller, turn); and n."""
    pairs = [on.by_turn[key] - off.by_turn[key] for key in on.by_turn if key in off.by_turn]
    return (statistics.median(pairs) if pairs else None), len(pairs)


def stage_line(figures: Figures) -> str:
    """The server's stage p50s (ms) over the runs, from its histogram buckets."""
    parts = []
    for stage in STAGES:
        buckets = figures.stages.get(stage)
        if buckets:
            parts.append(f"{stage} {bucket_quantile(0.5, buckets) * 1e3:.0f}")
    turns = max((max(b.values(), default=0.0) for b in figures.stages.values()), default=0.0)
    return (", ".join(parts) + f" ({turns:.0f} turns)") if parts else "no stage histograms"


def table(calls: int, rounds: int, turns: int, figures: dict[str, Figures]) -> list[str]:
    """One N's table: heard p50/p95 per mode, the ratios to off, the server's stages."""
    rng = random.Random(calls)
    off = figures["off"]
    lines = [
        f"N={calls}: {rounds} round(s) of {calls} call(s) at once, {turns} turns a call; "
        "heard voice-to-voice (ms)",
        f"{'mode':<9} {'p50':>6} {'p95':>6} {'n':>4} {'no answer':>9} {'p50/off':>8} "
        f"{'95% interval':>13} {'paired diff':>13} {'within 1.05':>11}",
    ]
    for mode in MODES:
        mine = figures[mode]
        row = (
            f"{mode:<9} {p50(mine.heard):>6.0f} {p95(mine.heard):>6.0f} "
            f"{len(mine.heard):>4} {mine.unanswered:>9}"
        )
        if mode != "off" and mine.heard and off.heard:
            ratio = p50(mine.heard) / p50(off.heard)
            low, high = ratio_interval(mine.heard, off.heard, rng)
            diff, pairs = paired_difference(mine, off)
            paired = "" if diff is None else f"{diff:+.0f} ({pairs})"
            within = "yes" if ratio <= TARGET else "no"
            row += f" {ratio:>8.2f} {f'{low:.2f}-{high:.2f}':>13} {paired:>13} {within:>11}"
        lines.append(row)
    lines.append("server stage p50s (ms, from /metrics):")
    lines += [f"  {mode:<9} {stage_line(figures[mode])}" for mode in MODES]
    return lines


def summary(results: dict[int, dict[str, Figures]]) -> str:
    """The one-line summary: per N, each mode's heard p50 and the on/off ratios."""
    parts = []
    over = []
    for calls, figures in results.items():
        off = p50(figures["off"].heard)
        part = f"N={calls} off p50={off:.0f}ms"
        for mode in RECORDED:
            mine = p50(figures[mode].heard)
            ratio = mine / off if off else float("nan")
            part += f" {mode} p50={mine:.0f}ms ({ratio:.2f})"
            if not ratio <= TARGET:
                over.append(f"N={calls} {mode}")
        parts.append(part)
    verdict = "yes" if not over else "no: " + ", ".join(over)
    return "records_overhead: " + " | ".join(parts) + f" | within {TARGET}: {verdict}"


def record_counters(urls: dict[str, str]) -> str:
    """Each server's records counters (written / write errors / dropped) at the end."""
    parts = []
    for mode, url in urls.items():
        found = scrape(url)
        if found is None:
            parts.append(f"{mode} (no /metrics)")
            continue
        counts = [found.counters.get(name) for _, name in RECORD_COUNTERS]
        shown = "/".join("-" if c is None else f"{c:.0f}" for c in counts)
        parts.append(f"{mode} {shown}")
    names = " / ".join(label for label, _ in RECORD_COUNTERS)
    return f"records {names}: " + ", ".join(parts)


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    began = time.monotonic()
    shuffle = random.Random(args.seed)
    results: dict[int, dict[str, Figures]] = {n: {m: Figures() for m in MODES} for n in args.calls}
    with (
        tempfile.TemporaryDirectory(prefix="voxline-records-overhead-") as tmp,
        postgres_cluster() as cluster,
    ):
        log(f"PostgreSQL on 127.0.0.1:{cluster.port} ({cluster.bin})")
        with servers(Path(tmp), cluster.url) as urls:
            for mode in MODES:  # not counted: a fresh server's first call is slower
                _, _, secs = measure(urls[mode], 1, 1, args.seed - 1, -1, Figures())
                log(f"{mode}: warm-up call done ({secs:.0f} s)")
            for round_ in range(args.rounds):
                seed = args.seed + round_
                for calls in args.calls:
                    order = list(MODES)
                    shuffle.shuffle(order)
                    for mode in order:
                        median, heard, secs = measure(
                            urls[mode], calls, args.turns, seed, round_, results[calls][mode]
                        )
                        shown = "-" if median is None else f"{median:.0f}ms"
                        log(
                            f"round {round_ + 1}/{args.rounds} N={calls} seed {seed} {mode}: "
                            f"heard p50={shown} n={heard} ({secs:.0f} s)"
                        )
            counters = record_counters(urls)
    print(
        f"records on vs off: voxline serve x3 on llama.cpp, bank persona, {args.rounds} "
        f"round(s), seeds {args.seed}..{args.seed + args.rounds - 1}, "
        f"{(time.monotonic() - began) / 60:.1f} min"
    )
    for calls, figures in results.items():
        print()
        print("\n".join(table(calls, args.rounds, args.turns, figures)))
    print()
    print(counters)
    print(summary(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every N (default 2)")
    parser.add_argument(
        "--calls", type=int, nargs="+", default=[1, 4], metavar="N",
        help="callers at once, one bench run each per mode and round (default 1 4)",
    )  # fmt: skip
    parser.add_argument("--turns", type=int, default=3, help="turns a call (default 3)")
    parser.add_argument(
        "--seed", type=int, default=1, help="round r's callers use seed+r (default 1)"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.turns < 1 or any(n < 1 for n in args.calls):
        parser.error("--rounds, --turns and every --calls must be at least 1")
    signal.signal(signal.SIGTERM, _terminated)
    try:
        run(args)
    except KeyboardInterrupt:
        log("interrupted: every process started here was stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
