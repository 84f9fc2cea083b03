"""``voxline check``: validate persona files before they reach a call."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def check_paths(paths: list[Path]) -> int:
    """Validate each file; print ``ok`` or every problem (file, field, expectation).

    Returns:
        0 when every file is valid, 2 otherwise.
    """
    from voxline.personas import load_persona
    from voxline.yamlfile import ConfigError

    failed = False
    for path in paths:
        try:
            persona = load_persona(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
        else:
            print(f"{path}: ok (persona {persona.name})")
    return EXIT_BAD_INPUT if failed else EXIT_OK
