"""`voxline check` on thousands of mistaken versions of the shipped personas and tool specs.

Each version changes one to three lines of a shipped file: a value replaced by another
type, a YAML tag, an alias or an odd scalar; a line cut short, repeated or re-indented.
Whatever the result (valid or not), checking it must never raise: every problem is a
line that names the file, and the exit code is 0 or 2. The mutations are seeded, so a
failure reproduces.
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil

import pytest

from tests.conftest import ROOT
from voxline.bot.check import check_paths

SHIPPED = [
    ROOT / "personas" / "bank_support.yaml",
    ROOT / "personas" / "restaurant_booking.yaml",
    ROOT / "tools" / "get_balance.yaml",
    ROOT / "tools" / "book_table.yaml",
    ROOT / "tools" / "list_recent_transactions.yaml",
]
VALUES = [
    "null", "~", "[]", "{}", "-1", "0", "1e999", "-.inf", ".nan", '"x"', "0x1F", "0o17",
    "2026-01-01", "2026-13-45", "!!binary aGVsbG8=", "!!binary ###", "true", "[1, [2]]",
    "{a: {b: c}}", '""', "'*'", "!!set {a, b}", "!!omap [a: 1]", "!!omap {a: 1}",
    "*undefined", "&a x", "!!str", "!!int x", "!!float y", "!!bool z", "!!timestamp bad",
    "!!null x", "!!str [1]", "!!map [1]", "!!seq {a: 1}", "!!python/name:os.system",
    "18446744073709551616", "9" * 5000, '"\\ud800"', "|\n  text", ">-\n  text", "? [a]",
    "<<: 1", "[*a, *a]", '"\\x00"', "'" + "y" * 2000 + "'", "{<<: [1]}", "!custom x",
]  # fmt: skip


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        index = rng.randrange(len(lines))
        line, roll = lines[index], rng.random()
        if ":" in line and roll < 0.6:
            key = line.partition(":")[0]
            lines[index] = f"{key}: {rng.choice(VALUES)}"
        elif roll < 0.75:
            lines[index] = line[: rng.randrange(len(line) + 1)]
        elif roll < 0.85:
            lines.insert(index, line)
        elif roll < 0.95:
            lines[index] = " " * rng.randint(0, 5) + line.strip()
        else:
            lines[index] = line + " " + rng.choice(VALUES)
    return "\n".join(lines)


@pytest.mark.parametrize("seed", range(8))
def test_check_never_raises_on_a_mistaken_file(tmp_path, seed):
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    (tmp_path / "personas").mkdir()
    rng = random.Random(seed)
    outcomes = {0: 0, 2: 0}
    for index in range(250):
        source = rng.choice(SHIPPED)
        path = tmp_path / source.parent.name / f"m{seed}_{index}_{source.name}"
        path.write_text(mutate(source.read_text(), rng))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = check_paths([path])  # raises on a crash: the test fails with its traceback
        outcomes[code] += 1
        for line in printed.getvalue().splitlines():
            assert line.startswith(f"{path}: "), (path.read_text(), line)
    assert outcomes[2] > 100, outcomes  # most mutations are mistakes, and were caught
