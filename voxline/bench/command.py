"""``voxline bench URL``: the command line, the table it prints, and its exit codes.

Exit codes: 0 the run finished (whatever the calls did), 1 it could not run (the
server or the stock bot unreachable), 2 bad input (a flag out of range, no
``TWILIO_AUTH_TOKEN``, espeak-ng missing), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_CALLS = 64
DEFAULT_PERSONA = Path("personas") / "bank_support.yaml"


def add_parser(commands: Any) -> None:
    """Add the ``bench`` subcommand to the ``voxline`` command's subparsers."""
    bench = commands.add_parser(
        "bench",
        help="simulated phone callers against a running server (and stock pipecat)",
        description="N simulated Twilio callers talk to the server at URL at once, K turns "
        "each; prints voice-to-voice as heard, the server's per-stage latency and memory "
        "from its /metrics, refusals, audio underruns and errors. Needs TWILIO_AUTH_TOKEN "
        "(the server's) and espeak-ng.",
    )
    bench.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    bench.add_argument(
        "--calls", type=int, nargs="+", default=[1], metavar="N", help="callers at once; "
        "several values run one after another (default 1)"
    )  # fmt: skip
    bench.add_argument("--turns", type=int, default=2, metavar="K", help="turns a call (default 2)")
    bench.add_argument("--rounds", type=int, default=1, help="bursts of N calls per N (default 1)")
    bench.add_argument(
        "--baseline-pipecat",
        action="store_true",
        help="then run the same callers against a stock pipecat bot started here, print ratios",
    )
    bench.add_argument(
        "--baseline-llm",
        choices=["auto", "llama_cpp", "vllm"],
        default="auto",
        help="the stock bot's LLM server (default: the kind the server's /metrics reports)",
    )
    bench.add_argument(
        "--persona",
        type=Path,
        default=DEFAULT_PERSONA,
        help="persona the stock bot plays (default personas/bank_support.yaml)",
    )
    bench.add_argument("--number", default="+15550100000", help="the called number")
    bench.add_argument(
        "--webhook-url", help="the URL Twilio signs (the server's public_url + /twilio/voice)"
    )
    bench.add_argument("--seed", type=int, default=15, help="callers' voices, words and pauses")
    bench.add_argument(
        "--underrun-ms", type=float, default=60.0, help="shortest stall counted as an underrun"
    )
    bench.add_argument("--json", action="store_true", help="print the results as one JSON document")


def _fail(message: str, code: int) -> int:
    print(f"voxline: error: {message}", file=sys.stderr)
    return code


def _problem(args: argparse.Namespace) -> str | None:
    if not args.url.startswith(("http://", "https://")):
        return f"URL must start with http:// or https://, not {args.url!r}"
    if any(not 1 <= n <= MAX_CALLS for n in args.calls):
        return f"--calls: each N must be between 1 and {MAX_CALLS}"
    if not 1 <= args.turns <= 20:
        return "--turns must be between 1 and 20"
    if not 1 <= args.rounds <= 100:
        return "--rounds must be between 1 and 100"
    if args.underrun_ms <= 0:
        return "--underrun-ms must be positive"
    if args.baseline_pipecat and not args.persona.is_file():
        return f"--persona {args.persona}: no such file (the stock bot's persona)"
    return None


def bench(args: argparse.Namespace) -> int:
    """Run ``voxline bench`` and print its table (or JSON)."""
    if (problem := _problem(args)) is not None:
        return _fail(problem, EXIT_BAD_INPUT)
    token = os.environ.get("TWILIO_AUTH_TOKEN", "")
    if not token:
        return _fail(
            "set TWILIO_AUTH_TOKEN to the token the server checks Twilio signatures with",
            EXIT_BAD_INPUT,
        )

    import httpx

    from voxline.bench.callers import SpeechError
    from voxline.bench.report import render
    from voxline.bench.run import BenchSettings, run_bench
    from voxline.bench.stock import StockStackError
    from voxline.engines.server_process import LLMServerError

    try:
        httpx.get(args.url.rstrip("/") + "/health", timeout=10)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach {args.url}: {exc}", EXIT_FAILURE)
    settings = BenchSettings(
        url=args.url.rstrip("/"),
        auth_token=token,
        calls=tuple(args.calls),
        turns=args.turns,
        rounds=args.rounds,
        seed=args.seed,
        underrun_ms=args.underrun_ms,
        number=args.number,
        webhook_url=args.webhook_url,
        baseline_pipecat=args.baseline_pipecat,
        baseline_llm=args.baseline_llm,
        persona=args.persona.resolve(),
    )

    def progress(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    try:
        report = asyncio.run(run_bench(settings, progress))
    except KeyboardInterrupt:  # the stock stack, if any, was stopped on the way out
        return _fail("interrupted", EXIT_INTERRUPTED)
    except SpeechError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (StockStackError, LLMServerError) as exc:
        return _fail(str(exc), EXIT_FAILURE)
    print(report.model_dump_json(indent=2) if args.json else render(report))
    return EXIT_OK
