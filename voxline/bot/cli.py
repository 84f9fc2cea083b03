"""The ``voxline`` command: ``talk`` runs one call from an audio clip; ``check`` validates files.

Exit codes: 0 success, 1 a failure while running, 2 bad input (a persona or
config that fails validation, a missing or unusable audio file), 130 Ctrl-C,
143 SIGTERM.
Bad input is reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TextIO

from loguru import logger

from voxline import call_log

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def _not_known_noise(record) -> bool:
    # pipecat warns on every turn that stop_secs differs from its benchmark's 0.2 s;
    # voxline chooses 0.4 s on purpose (a comma pause must not end the turn) and
    # sets its own STT p99 latency.
    return "differs from the recommended default" not in record["message"]


def _configure_logging(verbose: bool) -> None:
    # Before pipecat is imported: it logs a banner at import time.
    logger.remove()
    level = "DEBUG" if verbose else os.environ.get("VOXLINE_LOG_LEVEL", "WARNING")
    # Lines of a call carry its id (and trace id) after the source location.
    logger.add(sys.stderr, level=level, filter=_not_known_noise, format=call_log.log_format)
    _configure_warnings(verbose)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    logger.debug(f"{category.__name__}: {message} ({filename}:{lineno})")


def _configure_warnings(verbose: bool) -> None:
    """Python warnings (the libraries' deprecations, FutureWarning, UserWarning) go to
    the log at DEBUG: shown with ``-v``, each once per place it is raised; never
    printed to the user's terminal otherwise.

    Filters alone cannot hide them: pipecat raises its deprecations under an
    ``"always"`` filter of its own, so their display is what is replaced. Warnings
    asked for explicitly (``python -W``, ``PYTHONWARNINGS``) are left as Python shows them.
    """
    if sys.warnoptions:
        return
    if verbose:
        warnings.simplefilter("default")
    warnings.showwarning = _log_warning


def _fail(message: str, code: int) -> int:
    # A file with several problems gives one line each, every line marked as an error.
    for line in str(message).splitlines() or [""]:
        print(f"voxline: error: {line}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug output to stderr, with the libraries' Python warnings",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    talk = commands.add_parser(
        "talk", help="play a caller's audio through a persona, record the reply"
    )
    talk.add_argument("--persona", required=True, type=Path, help="persona YAML file")
    source = talk.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", type=Path, help="the caller's audio (WAV, any rate, mono or stereo)"
    )
    source.add_argument(
        "--say", metavar="TEXT", help="synthesize the caller's words with Piper instead"
    )
    talk.add_argument(
        "--output", required=True, type=Path, help="where to write the bot's audio (WAV)"
    )
    talk.add_argument("--json", action="store_true", help="print the result as one JSON document")
    talk.add_argument("--config", type=Path, help="server config (voxline.yaml); default: built-in")
    talk.add_argument(
        "--llm",
        choices=["llama_cpp", "vllm"],
        help="embedded LLM server (overrides engines.llm.backend; default llama_cpp)",
    )
    talk.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the bot after the caller ends",
    )

    serve = commands.add_parser("serve", help="serve phone calls (Twilio) on the shared engines")
    serve.add_argument("--config", type=Path, help="server config (voxline.yaml)")
    serve.add_argument("--persona", type=Path, help="the default persona (overrides the config's)")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    serve.add_argument(
        "--llm",
        choices=["llama_cpp", "vllm"],
        help="embedded LLM server (overrides engines.llm.backend; default vllm)",
    )

    dial = commands.add_parser("dial", help="call a voxline server the way Twilio does")
    dial.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    dial_source = dial.add_mutually_exclusive_group(required=True)
    dial_source.add_argument("--input", type=Path, help="what the caller says (WAV)")
    dial_source.add_argument("--say", metavar="TEXT", help="caller's words, spoken by Piper")
    dial.add_argument("--number", default="+15550100000", help="the called number")
    dial.add_argument("--dtmf", default="", help="keypad digits to press after speaking")
    dial.add_argument("--output", type=Path, help="write what the caller heard (WAV, 8 kHz)")
    dial.add_argument(
        "--webhook-url", help="the URL Twilio signs (the server's public_url + /twilio/voice)"
    )
    dial.add_argument("--json", action="store_true", help="print the result as one JSON document")

    from voxline.bench.command import add_parser as add_bench_parser

    add_bench_parser(commands)

    from voxline.records.cli import add_parser as add_calls_parser

    add_calls_parser(commands)  # `voxline calls list | show`: the call records

    from voxline.scenarios.command import add_parser as add_test_parser

    add_test_parser(commands)  # `voxline test`: scenario files through the real pipeline

    check = commands.add_parser("check", help="validate persona and config files")
    check.add_argument(
        "paths", nargs="+", type=Path, help="persona, tool spec or voxline.yaml files"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``voxline`` console script."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command == "serve":
        from voxline.server.serve import serve

        return serve(args)
    if args.command == "dial":
        from voxline.bot.dial import dial

        return dial(args)
    if args.command == "bench":
        from voxline.bench.command import bench

        return bench(args)
    if args.command == "calls":
        from voxline.records.cli import run as calls

        return calls(args)
    if args.command == "test":
        from voxline.scenarios.command import run as run_scenarios

        return run_scenarios(args)
    if args.command == "check":
        from voxline.bot.check import check_paths

        return check_paths(args.paths)
    return _talk(args)


def _talk(args: argparse.Namespace) -> int:
    from voxline.bot.audio_input import AudioInputError, output_problem, read_caller_audio
    from voxline.config import load_config
    from voxline.models import ModelNotAvailableError
    from voxline.personas import load_persona
    from voxline.yamlfile import ConfigError

    try:
        config = load_config(args.config)
        config = (config.with_llm_backend(args.llm) if args.llm else config).for_command("talk")
        if args.verbose:  # one local call, the developer's own: its words may be logged
            config = config.model_copy(update={"log_content": True})
        persona = load_persona(args.persona, default_llm_model=config.engines.llm.model)
        audio = read_caller_audio(args.input) if args.input else None
    except (ConfigError, AudioInputError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    if args.say is not None and not args.say.strip():
        return _fail("--say needs the caller's words", EXIT_BAD_INPUT)
    output = args.output
    if (problem := output_problem(output)) is not None:
        return _fail(problem, EXIT_BAD_INPUT)

    from voxline.bot.talk import TalkTimeoutError, synthesize_caller, talk
    from voxline.engines.llm import LLMServerError

    async def run():
        from voxline.bot.runtime import Runtime

        samples, rate = audio if audio is not None else synthesize_caller(args.say)
        main_task = asyncio.current_task()
        assert main_task is not None
        loop = asyncio.get_running_loop()

        def stop(code: int) -> None:
            # Ctrl-C and SIGTERM end the call, so the LLM server is stopped too. The
            # cancellation is repeated every 3 s (longer than a clean shutdown) until the
            # call ends: one absorbed by a library (seen during the prompt warm-up's HTTP
            # request) must not keep the call running.
            signalled.append(code)

            def cancel_until_done() -> None:
                if not main_task.done():
                    main_task.cancel()
                    loop.call_later(3.0, cancel_until_done)

            cancel_until_done()

        loop.add_signal_handler(signal.SIGINT, stop, EXIT_INTERRUPTED)
        loop.add_signal_handler(signal.SIGTERM, stop, EXIT_TERMINATED)
        async with Runtime(config) as runtime:
            return await talk(persona, runtime, samples, rate, timeout=args.timeout)

    signalled: list[int] = []
    try:
        result = asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        if signalled and signalled[0] == EXIT_TERMINATED:
            return _fail("terminated", EXIT_TERMINATED)
        return _fail("interrupted", EXIT_INTERRUPTED)
    except ModelNotAvailableError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (LLMServerError, TalkTimeoutError) as exc:
        return _fail(str(exc), EXIT_FAILURE)

    import soundfile

    try:  # WAV whatever the file is called: the call is not lost to an odd extension
        soundfile.write(
            str(output), result.audio, result.sample_rate, format="WAV", subtype="PCM_16"
        )
    except (OSError, RuntimeError) as exc:
        return _fail(f"cannot write {output}: {exc}", EXIT_FAILURE)
    turns = [turn.as_dict() for turn in result.turns]
    if args.json:
        document = {
            "persona": result.persona,
            "greeting": result.greeting,
            "output": str(output),
            "output_secs": round(result.audio.size / result.sample_rate, 2),
            "turns": turns,
        }
        print(json.dumps(document, indent=2))
    else:
        _print_turns(result.greeting, turns, output)
    return EXIT_OK


def _print_turns(greeting: str, turns: list[dict], output: Path) -> None:
    if greeting:
        print(f"bot (greeting): {greeting}")
    for turn in turns:
        print(f"\nturn {turn['turn']}")
        print(f"  caller: {turn['caller']}")
        print(f"  bot:    {turn['bot']}{'  [interrupted]' if turn['interrupted'] else ''}")
        if turn.get("error"):
            print(f"  error:  {turn['error']} (the caller heard the persona's apology)")
        latency = "  ".join(
            f"{name}={'-' if value is None else f'{value:.0f}ms'}"
            for name, value in turn["latency_ms"].items()
        )
        print(f"  latency: {latency}")
        taking = turn.get("turn_taking") or {}
        if taking.get("commit_reason"):
            cancelled = len(taking.get("cancellations") or [])
            print(
                f"  turn:    ended by {taking['commit_reason']}; speculative starts "
                f"{taking.get('speculative_starts', 0)}, cancelled {cancelled}, "
                f"reply prepared before the end: {'yes' if taking.get('reused') else 'no'}"
            )
    if not turns:
        print("no caller turn was heard")
    print(f"\nbot audio written to {output}")


if __name__ == "__main__":
    sys.exit(main())
