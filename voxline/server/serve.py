"""``voxline serve``: one process, one Runtime, many calls.

Start-up happens before the port accepts calls: the embedded LLM server (vLLM
unless ``engines.llm.backend`` says otherwise) is started and answers, every
persona's engines are loaded and its prompt prefix is warmed, each step reported
on stderr; only then does the server listen and print ``voxline ready``. A
failure on the way is one line on stderr, never a traceback.

Signals: during start-up SIGINT or SIGTERM stops what was started. Once serving,
the first one drains (:mod:`voxline.server.drain`: no new calls, readiness 503,
the calls in progress go on until they end or ``drain_timeout_secs`` passes, then
hear the goodbye), the server stops, the engines close and the process exits 0;
a second signal stops at once (every connection closed, exit 130 or 143).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from voxline.config import ServerConfig
    from voxline.personas import Persona

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class StartupError(RuntimeError):
    """``serve`` cannot start; the message is one line and names the fix.

    Args:
        message: what is wrong and how to fix it.
        code: the exit code.
    """

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def progress(line: str) -> None:
    """Print one line of start-up progress on stderr, whatever the log level."""
    from voxline.server.signals import say

    say(f"voxline: {line}")


def serve(args: argparse.Namespace) -> int:
    """Load the config and personas, then serve until SIGINT or SIGTERM."""
    from voxline.config import load_config
    from voxline.transports.twilio_webhook import (
        StreamSecretError,
        secret_file_warning,
        stream_secret,
    )
    from voxline.yamlfile import ConfigError

    try:
        config = load_config(args.config)
        config = (config.with_llm_backend(args.llm) if args.llm else config).for_command("serve")
        if args.persona is not None:
            config = config.model_copy(update={"default_persona": args.persona})
        personas = load_personas(config, args.config, persona_flag=args.persona is not None)
        # The stream-token key is read now, so a bad one stops serve before any engine
        # loads; the app reads it again (the same way) when it builds its tokens.
        stream_secret(config.twilio.stream_secret_file)
    except (ConfigError, StreamSecretError) as exc:
        for line in str(exc).splitlines():  # one line per problem, each marked an error
            print(f"voxline: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if config.telemetry.otlp_endpoint is not None:
        # Imported only when traces are asked for: the module loads pipecat, whose
        # banner must not come before a bad config's one line.
        from voxline.server.telemetry import TelemetryUnavailable, check_available

        try:
            check_available(config.telemetry)  # the otel extra is installed
        except TelemetryUnavailable as exc:
            print(f"voxline: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    if (warning := secret_file_warning(config.twilio.stream_secret_file)) is not None:
        print(f"voxline: warning: {warning}", file=sys.stderr)
    if not os.environ.get("TWILIO_AUTH_TOKEN"):
        print(
            "voxline: warning: TWILIO_AUTH_TOKEN is not set: Twilio voice webhooks will be "
            "refused with 403 (their signatures cannot be checked)",
            file=sys.stderr,
        )
    try:
        return asyncio.run(_serve(args, config, personas))
    except StartupError as exc:
        print(f"voxline: error: {exc}", file=sys.stderr)
        return exc.code


def load_personas(
    config: ServerConfig, config_path: Path | None, *, persona_flag: bool = False
) -> dict[Path, Persona]:
    """Load every persona the config answers with, by path, default first.

    A persona whose file names no ``llm.model`` gets the config's
    ``engines.llm.model``, so one line in ``voxline.yaml`` moves every such
    persona to another model, on llama.cpp and vLLM alike.

    Args:
        config: the server config.
        config_path: its file, named in errors about it.
        persona_flag: the default persona came from ``--persona``, not the file.

    Raises:
        ConfigError: no persona is configured, a persona file the config names is
            missing (naming the config's field), or a persona is invalid (naming
            the persona's file and field).
    """
    from voxline.personas import load_persona
    from voxline.yamlfile import ConfigError

    where = config_path or "voxline.yaml"
    paths = config.persona_paths()
    if not paths:
        raise ConfigError(
            where, ["no persona: give --persona or set default_persona in voxline.yaml"]
        )
    # A persona file that is not there is the config's mistake: name the field. A
    # persona that is there but wrong names its own file and field.
    missing = [
        f"{field}: persona file not found: {_shown(path)}"
        for field, path in _persona_fields(config)
        if not _is_file(path) and not (persona_flag and field == "default_persona")
    ]
    if missing:
        raise ConfigError(where, missing)
    model = config.engines.llm.model
    return {path: load_persona(path, default_llm_model=model) for path in paths}


def _persona_fields(config: ServerConfig) -> list[tuple[str, Path]]:
    """Every persona path of ``config`` with the field that names it."""
    fields: list[tuple[str, Path]] = []
    if config.default_persona is not None:
        fields.append(("default_persona", config.default_persona))
    fields += [(f"numbers.{number}", path) for number, path in config.numbers.items()]
    fields += [
        (f"widgets.{key}.persona", widget.persona)
        for key, widget in config.widgets.items()
        if widget.persona is not None
    ]
    return fields


def _shown(path: Path) -> str:
    """The path as text, escaped if it holds characters a terminal would hide."""
    return str(path) if str(path).isprintable() else repr(str(path))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # ValueError: a NUL character in the path
        return False


async def _serve(
    args: argparse.Namespace, config: ServerConfig, personas: dict[Path, Persona]
) -> int:
    """Start every engine the personas need, then listen; returns the exit code.

    Raises:
        StartupError: vLLM is missing or the address cannot be bound.
    """
    import uvicorn
    from loguru import logger

    from voxline.bot.runtime import Runtime
    from voxline.engines.llm import LLMServerError
    from voxline.models import ModelNotAvailableError
    from voxline.records.writer import attached
    from voxline.server.app import create_app
    from voxline.server.signals import (
        EXIT_BY_SIGNAL,
        DrainOnSignal,
        say,
        signals_cancel_this_task,
    )
    from voxline.server.startup_heap import freeze_startup_heap
    from voxline.transports.twilio import MAX_WEBSOCKET_MESSAGE_BYTES

    started = time.monotonic()
    config = await choose_llm_backend(config, personas, args.config)
    listener = _bind(args.host, args.port)
    records = await _open_records(config, listener)
    url = f"http://{args.host}:{args.port}"
    names = ", ".join(persona.name for persona in personas.values())

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # DrainOnSignal has them: uvicorn's would close every call at once

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening: scripts and people wait for this line
                frozen = freeze_startup_heap()
                logger.info(f"start-up heap: {frozen} objects frozen out of full collections")
                say(
                    f"voxline ready in {time.monotonic() - started:.1f} s: personas {names}; "
                    f"serving on {url}"
                )

    async with Runtime(config, progress=progress) as runtime, attached(records, runtime.calls):
        async with signals_cancel_this_task() as received:
            try:
                for persona in personas.values():
                    await runtime.prepare(persona)
            except asyncio.CancelledError:
                if not received:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                listener.close()
                name = signal.Signals(received[0]).name
                say(f"voxline: {name} during start-up: stopping")
                return EXIT_BY_SIGNAL[received[0]]
            except (LLMServerError, ModelNotAvailableError) as exc:
                listener.close()
                print(f"voxline: error: {exc}", file=sys.stderr)
                # A model that is not installed is the config's to fix, as in `talk`.
                bad_input = isinstance(exc, ModelNotAvailableError)
                return EXIT_BAD_INPUT if bad_input else EXIT_FAILURE
        app = create_app(config, personas, runtime)
        app.state.records = records  # the RecordWriter (None with records off)
        # A Twilio message is under 1 KB: a far larger websocket message is closed with 1009.
        # X-Forwarded-* are the app's to read (http.trusted_proxies), not uvicorn's.
        server = Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="on",
                ws_max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
                proxy_headers=False,
            )
        )
        # The first signal drains the calls, then stops the server, whose shutdown
        # (the app's lifespan) closes the Runtime, which stops every server it started.
        with DrainOnSignal(server, app.state.drain) as signals:
            await server.serve(sockets=[listener])
    if signals.stopped_by is not None:
        return EXIT_BY_SIGNAL[signals.stopped_by]
    return EXIT_OK if server.started else EXIT_FAILURE


async def choose_llm_backend(
    config: ServerConfig, personas: dict[Path, Persona], config_path: Path | None
) -> ServerConfig:
    """The config to serve with once vLLM's presence is known.

    With ``engines.llm.backend: vllm`` (the default of ``serve``) and a persona
    served by the embedded LLM, vLLM must be importable from
    ``engines.vllm.python``; without it ``serve`` stops at once, before loading
    anything, unless ``engines.llm.fallback_to_llama_cpp`` allows llama.cpp.

    Raises:
        StartupError: vLLM is missing and no fallback is allowed (exit code 2).
    """
    from voxline.engines.vllm import INSTALL_COMMAND, vllm_missing

    llm = config.engines.llm
    embedded = any(not persona.llm.base_url for persona in personas.values())
    if llm.backend != "vllm" or not embedded:
        return config
    reason = await vllm_missing(config.engines.vllm.python)
    if reason is None:
        return config
    if llm.fallback_to_llama_cpp:
        progress(
            f"warning: vLLM is not installed ({reason}); engines.llm.fallback_to_llama_cpp "
            "is set: serving with llama.cpp, which answers one request at a time"
        )
        return config.with_llm_backend("llama_cpp")
    raise StartupError(
        f"vLLM is not installed ({reason}): install it with `{INSTALL_COMMAND}`, or serve "
        "with llama.cpp (one request at a time): `--llm llama_cpp` or engines.llm.backend: "
        f"llama_cpp in {config_path or 'voxline.yaml'}",
        EXIT_BAD_INPUT,
    )


async def _open_records(config: ServerConfig, listener: socket.socket):
    """The call records' writer, its database reached and its schema ready (or None).

    Raises:
        StartupError: the database cannot be reached and ``records.optional`` is false
            (exit code 2).
    """
    from voxline.records.store import RecordsUnavailableError
    from voxline.records.writer import open_writer

    try:
        return await open_writer(config)
    except RecordsUnavailableError as exc:
        listener.close()
        raise StartupError(
            f"{exc} (fix records_url, or set records.optional: true to serve while it is away)",
            EXIT_BAD_INPUT,
        ) from None


def _bind(host: str, port: int) -> socket.socket:
    """Take the port before the slow start-up, so a taken port fails at once.

    It listens only once every persona is ready: until then a caller is refused
    rather than left waiting on a server that cannot answer yet.

    Raises:
        StartupError: the address cannot be bound (exit code 2).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(f"--host {host}: {exc}", EXIT_BAD_INPUT) from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror} (choose another --port)",
            EXIT_BAD_INPUT,
        ) from None
    return listener
