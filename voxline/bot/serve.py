"""``voxline serve``: one process, one Runtime, many calls."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def serve(args: argparse.Namespace) -> int:
    """Load the config and personas, then serve until SIGINT or SIGTERM."""
    from voxline.config import load_config
    from voxline.personas import Persona, load_persona
    from voxline.yamlfile import ConfigError

    try:
        config = load_config(args.config)
        if args.persona is not None:
            config = config.model_copy(update={"default_persona": args.persona})
        paths = config.persona_paths()
        if not paths:
            raise ConfigError(
                args.config or "voxline.yaml",
                ["no persona: give --persona or set default_persona in voxline.yaml"],
            )
        personas: dict[Path, Persona] = {path: load_persona(path) for path in paths}
    except ConfigError as exc:
        print(f"voxline: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    if not os.environ.get("TWILIO_AUTH_TOKEN"):
        print(
            "voxline: warning: TWILIO_AUTH_TOKEN is not set: Twilio voice webhooks will be "
            "refused with 403 (their signatures cannot be checked)",
            file=sys.stderr,
        )

    import uvicorn

    from voxline.bot.runtime import Runtime
    from voxline.bot.server import create_app

    app = create_app(config, personas, Runtime(config))
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    )
    print(f"voxline serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    asyncio.run(server.serve())
    return EXIT_OK if server.started else EXIT_FAILURE
