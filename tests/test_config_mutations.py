"""`voxline check` on thousands of mistaken personas, tool specs and server configs.

Each version changes one to three lines of a shipped persona or tool spec, or of a
full voxline.yaml: a value replaced by another type, a YAML tag, an alias or an odd
scalar; a line cut short, repeated or re-indented. Whatever the result (valid or not),
checking it must never raise: every problem is a line that names the file, and the exit
code is 0 or 2. The mutations are seeded, so a failure reproduces.
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
SERVER_CONFIG = """\
public_url: https://voice.example.com
default_persona: personas/bank.yaml
numbers:
  "+15550100001": personas/bank.yaml
max_calls: 4
engines:
  cpu_cores: 2
  whisper: {device: cpu, max_batch: 8, min_window_secs: 15}
  llm:
    backend: llama_cpp
    model: smollm2
    n_ctx: 4096
  vllm: {device: cpu, extra_args: [--foo]}
twilio:
  stream_token_ttl_secs: 60
  stream_secret_file: stream.key
widgets:
  demo:
    allowed_origins: ["https://shop.example.com"]
webrtc:
  ice_servers:
    - urls: stun:stun.example.com
"""
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
    shutil.copy(ROOT / "personas" / "bank_support.yaml", tmp_path / "personas" / "bank.yaml")
    (tmp_path / "stream.key").write_text("k" * 40)
    sources = [(path.read_text(), path.parent.name, path.name) for path in SHIPPED]
    sources += [(SERVER_CONFIG, ".", "voxline.yaml")] * 2
    rng = random.Random(seed)
    outcomes = {0: 0, 2: 0}
    for index in range(250):
        text, folder, name = rng.choice(sources)
        path = tmp_path / folder / f"m{seed}_{index}_{name}"
        path.write_text(mutate(text, rng))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = check_paths([path])  # raises on a crash: the test fails with its traceback
        outcomes[code] += 1
        for line in printed.getvalue().splitlines():
            assert line.startswith(f"{path}: "), (path.read_text(), line)
    assert outcomes[2] > 100, outcomes  # most mutations are mistakes, and were caught
