"""How Linux shares the cores between sessions: why voxline keeps its LLM server in its session.

Starts four processes that spin for ``--secs`` seconds on a machine with two or more
cores: one in a session of its own (``setsid``, as the Runtime used to start vLLM) and
three in this script's session (as voxline's event loop, Whisper and Piper threads are),
then the same four all in this script's session, and prints the CPU seconds each
process got. With the scheduler's autogroups on
(``/proc/sys/kernel/sched_autogroup_enabled``), sessions get equal shares first, so the
lone process takes a whole core and the three share the other; in one session every
process gets the same share. docs/cpu.md has the figures::

    .venv/bin/python -m benchmarks.autogroup_share
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SPIN = "import time\nend = time.monotonic() + {secs}\nwhile time.monotonic() < end: pass\n"


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """Wait for a child and return the CPU seconds it used (user and system)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return usage.ru_utime + usage.ru_stime


def run(secs: float, apart: bool) -> tuple[float, list[float]]:
    """Spin four processes at once; the first in a session of its own when ``apart``."""
    code = SPIN.format(secs=secs)
    processes = [
        subprocess.Popen([sys.executable, "-c", code], start_new_session=apart and index == 0)
        for index in range(4)
    ]
    used = [cpu_seconds(process) for process in processes]
    return used[0], used[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secs", type=float, default=6.0, help="how long each process spins")
    args = parser.parse_args()
    setting = Path("/proc/sys/kernel/sched_autogroup_enabled")
    enabled = setting.read_text().strip() if setting.exists() else "absent"
    cores = len(os.sched_getaffinity(0))
    print(f"autogroup_share: {cores} cores, sched_autogroup_enabled {enabled}, {args.secs:g} s")
    for apart in (True, False):
        lone, others = run(args.secs, apart)
        label = "one in its own session" if apart else "all in one session    "
        shares = " ".join(f"{secs:4.1f}" for secs in others)
        print(
            f"{label}: first process {lone:4.1f} CPU-s, the other three {shares} CPU-s "
            f"({lone / args.secs:.0%} and {sum(others) / 3 / args.secs:.0%} of a core each)"
        )


if __name__ == "__main__":
    main()
