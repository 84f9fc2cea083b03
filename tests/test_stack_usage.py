"""The bench's stack usage: each process's CPU, a bot server's main thread apart, the machine."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from voxline.bench.stack_usage import VOXLINE_SERVER, StackUsage

BUSY_SECS = 1.5

# A stand-in named like the bot server (its command line says "voxline serve"): one
# thread burns a core while the main thread sleeps, as when Whisper runs beside an idle loop.
WORKER_BUSY = textwrap.dedent(
    f"""
    import threading, time
    def burn():
        end = time.monotonic() + {BUSY_SECS}
        while time.monotonic() < end:
            pass
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    """
)
MAIN_BUSY = textwrap.dedent(
    f"""
    import time
    end = time.monotonic() + {BUSY_SECS}
    while time.monotonic() < end:
        pass
    """
)


def measured(code: str):
    child = subprocess.Popen([sys.executable, "-c", code, "voxline", "serve"])
    try:
        usage = StackUsage([child.pid], interval=0.05).start()
        child.wait(timeout=30)
        usage.stop()
    finally:
        child.kill()
    return usage.cpu()


@pytest.mark.parametrize(("code", "main_busy"), [(WORKER_BUSY, False), (MAIN_BUSY, True)])
def test_cpu_of_a_process_and_its_main_thread(code: str, main_busy: bool):
    cpu = measured(code)
    cores = cpu.by_label[VOXLINE_SERVER]
    # One thread busy for the whole run, less start-up and the samples around it.
    assert 0.5 < cores <= 1.1, cpu
    main = cpu.main_threads[VOXLINE_SERVER]
    if main_busy:
        assert main > 0.5 * cores, cpu
    else:
        assert main < 0.25 * cores, cpu
    assert cpu.machine >= 0.8 * cores and 0.0 <= cpu.saturated <= 1.0
    line = cpu.line()
    assert line.startswith(f"stack {cpu.stack:.2f} of {cpu.cores} cores (voxline serve ")
    assert "main thread" in line


def test_an_idle_process_burns_nothing():
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        usage = StackUsage([child.pid], interval=0.05).start()
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5)"], check=True)
        usage.stop()
    finally:
        child.kill()
        child.wait()
    cpu = usage.cpu()
    assert cpu.secs > 0.4
    assert cpu.stack < 0.05, cpu
    assert cpu.main_threads == {}  # not a bot server
