"""``voxline test PATH... [--persona P] [--parallel N] [--junit FILE] [--json] [--repeat K]``.

Exit codes: 0 every scenario passed, 1 one failed (or a call could not run),
2 a bad scenario file (one line per problem: file, scenario, field, what was
expected), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_parser(commands) -> None:
    """Add ``test`` to the ``voxline`` command's subcommands."""
    test = commands.add_parser(
        "test", help="speak scenario files through a persona's real pipeline and check the calls"
    )
    test.add_argument(
        "paths", nargs="+", type=Path, help="scenario files (*.tests.yaml) or folders of them"
    )
    test.add_argument("--persona", type=Path, help="the persona for every file (default: each "
                      "file's `persona:`, or <name>.yaml beside <name>.tests.yaml)")  # fmt: skip
    test.add_argument(
        "--parallel", type=int, default=4, help="calls at once (default 4; 1: one by one)"
    )
    test.add_argument(
        "--repeat", type=int, default=1, help="run each scenario K times; reports pass rates"
    )
    test.add_argument("--junit", type=Path, help="write JUnit XML here (for CI)")
    test.add_argument("--json", action="store_true", help="print the result as one JSON document")
    test.add_argument("--config", type=Path, help="server config (voxline.yaml); default: built-in")
    test.add_argument(
        "--llm",
        choices=["llama_cpp", "vllm"],
        help="embedded LLM server (overrides engines.llm.backend; default llama_cpp)",
    )


def _fail(lines: list[str] | str, code: int) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"voxline: error: {line}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Run ``voxline test``; returns the exit code."""
    from voxline.config import load_config
    from voxline.scenarios.load import ScenarioFileError, load_suite
    from voxline.yamlfile import ConfigError

    if not 1 <= args.parallel <= 64:
        return _fail("--parallel must be between 1 and 64", EXIT_BAD_INPUT)
    if not 1 <= args.repeat <= 100:
        return _fail("--repeat must be between 1 and 100", EXIT_BAD_INPUT)
    if args.junit is not None and not args.junit.parent.is_dir():
        return _fail(f"--junit: folder {args.junit.parent} does not exist", EXIT_BAD_INPUT)
    try:
        config = load_config(args.config)
        config = (config.with_llm_backend(args.llm) if args.llm else config).for_command("talk")
        suite = load_suite(
            args.paths, persona_path=args.persona, default_llm_model=config.engines.llm.model
        )
    except ConfigError as exc:
        return _fail(str(exc).splitlines(), EXIT_BAD_INPUT)
    except ScenarioFileError as exc:
        return _fail(exc.problems, EXIT_BAD_INPUT)

    from voxline.bot.runtime import Runtime
    from voxline.engines.llm import LLMServerError
    from voxline.models import ModelNotAvailableError
    from voxline.scenarios.load import LoadedScenario
    from voxline.scenarios.report import json_report, text_report, write_junit
    from voxline.scenarios.run import ScenarioResult, run_suite
    from voxline.scenarios.voices import VoiceError

    def call_ended(loaded: LoadedScenario, wall_secs: float) -> None:
        if not args.json:
            print(f"  call over: {loaded.label} ({wall_secs:.1f} s)", flush=True)

    def progress(result: ScenarioResult) -> None:
        if not args.json:
            mark = "pass" if result.passed else "FAIL"
            print(f"  {mark} {result.loaded.label} ({result.wall_secs:.1f} s)", flush=True)

    async def main():
        async with Runtime(config) as runtime:
            return await run_suite(
                suite,
                runtime,
                parallel=args.parallel,
                repeat=args.repeat,
                on_result=progress,
                on_call_ended=call_ended,
            )

    try:
        outcome = asyncio.run(main())
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except ModelNotAvailableError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (LLMServerError, VoiceError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    if args.junit is not None:
        write_junit(outcome, args.junit)
    if args.json:
        print(json.dumps(json_report(outcome), indent=2))
    else:
        print(text_report(outcome))
    return EXIT_OK if outcome.passed else EXIT_FAILED
