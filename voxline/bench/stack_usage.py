"""What a whole stack holds and burns: the RSS and CPU time of every process under some
roots, sampled in a thread.

The server under test is found by the port it listens on when it runs on this
machine; its children (the LLM server and its workers) are counted with it. Beside
each process's CPU time, the machine's busy time is sampled too: on a machine shared
by the callers, the stack and the model servers, it says whether the cores were the
limit (every sample busy) or something else was.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import threading
import time
from urllib.parse import urlsplit

import psutil
from pydantic import BaseModel, ConfigDict

VOXLINE_SERVER = "voxline serve"
"""The label of voxline's bot server process."""
STOCK_SERVER = "stock pipecat bot"
"""The label of the stock pipecat bot's process."""


def process_label(process: psutil.Process) -> str:
    """A short name for a process of the stack: what it runs, not its interpreter."""
    try:
        name = process.name()
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    for marker, label in (
        ("EngineCore", "vLLM EngineCore"),
        ("vllm.entrypoints", "vLLM API server"),
        ("llama_cpp.server", "llama.cpp server"),
        ("voxline serve", VOXLINE_SERVER),
        ("stock_bot", STOCK_SERVER),
        ("multiprocessing", "multiprocessing helper"),
    ):
        if marker in name or marker in command:
            return label
    return name


def is_local(url: str) -> bool:
    """Whether ``url``'s host is this machine (a loopback address or this host's name)."""
    host = urlsplit(url).hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_pid(url: str) -> int | None:
    """The process of this machine's user that listens on ``url``'s port, if any."""
    if not is_local(url):
        return None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for connection in connections:
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid is not None
        ):
            return connection.pid
    return None


class CpuUse(BaseModel):
    """CPU used between :meth:`StackUsage.start` and :meth:`StackUsage.stop`.

    Attributes:
        secs: wall-clock seconds sampled.
        cores: the machine's logical cores.
        by_label: cores busy on average per kind of process (CPU seconds / ``secs``).
        main_threads: the same for the main thread of the bot servers (voxline's and
            stock pipecat's run their event loop there).
        machine: cores busy on average on the whole machine (the callers too).
        saturated: share of the samples in which the machine was at least
            :data:`SATURATED` busy.
    """

    model_config = ConfigDict(frozen=True)

    secs: float
    cores: int
    by_label: dict[str, float]
    main_threads: dict[str, float]
    machine: float
    saturated: float

    @property
    def stack(self) -> float:
        """Cores busy on average in the stack's processes."""
        return sum(self.by_label.values())

    def line(self) -> str:
        """The stack, each kind of process (a bot server's main thread apart), the machine."""
        parts = []
        for label, cores in sorted(self.by_label.items(), key=lambda item: -item[1]):
            loop = self.main_threads.get(label)
            parts.append(
                f"{label} {cores:.2f}" + ("" if loop is None else f" (main thread {loop:.2f})")
            )
        return (
            f"stack {self.stack:.2f} of {self.cores} cores ({', '.join(parts)}); machine "
            f"{self.machine:.2f}, at least {SATURATED:.0%} busy in {self.saturated:.0%} of "
            f"{self.secs:.0f} s"
        )


SATURATED = 0.95
"""The share of the cores at which a sample counts as the machine being saturated."""
MAIN_THREAD_LABELS = (VOXLINE_SERVER, STOCK_SERVER)
"""Processes whose main thread is timed apart: the bot servers' event loops."""


class StackUsage:
    """Samples the RSS and CPU time of every process in the trees under ``roots``.

    Between :meth:`start` and :meth:`stop` it keeps, per process (pid and label), the
    largest RSS seen and the CPU time used, the largest sum of RSS over the whole stack
    at one sample, and how busy the machine's cores were in each interval.

    Args:
        roots: process ids whose trees make the stack.
        interval: seconds between samples.
    """

    def __init__(self, roots: list[int], interval: float = 0.25):
        self.roots = roots
        self.interval = interval
        self.peak: dict[tuple[int, str], float] = {}
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._labels: dict[int, str] = {}
        self._cpu_first: dict[int, tuple[float, float]] = {}  # pid: process, main thread
        self._cpu_last: dict[int, tuple[float, float]] = {}
        self._machine: list[tuple[float, float]] = []  # (monotonic, busy CPU seconds)

    def sample(self) -> float:
        """One sample; returns the stack's total RSS in MB."""
        total = 0.0
        self._machine.append((time.monotonic(), _machine_busy_secs()))
        for root in self.roots:
            try:
                top = psutil.Process(root)
                processes = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for process in processes:
                if process.pid not in self._labels:
                    self._labels[process.pid] = process_label(process)
                label = self._labels[process.pid]
                try:
                    with process.oneshot():
                        rss = process.memory_info().rss / 2**20
                        times = process.cpu_times()
                    # Only a bot server's main thread is reported: no other process's
                    # threads are listed (vLLM's engine runs dozens).
                    main = main_thread_secs(process) if label in MAIN_THREAD_LABELS else 0.0
                except psutil.Error:
                    continue
                cpu = (times.user + times.system, main)
                key = (process.pid, label)
                self.peak[key] = max(self.peak.get(key, 0.0), rss)
                self._cpu_first.setdefault(process.pid, cpu)
                self._cpu_last[process.pid] = cpu
                total += rss
        self.peak_total = max(self.peak_total, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> StackUsage:
        """Forget what was measured and sample from now on."""
        self.peak, self.peak_total = {}, 0.0
        self._cpu_first, self._cpu_last, self._machine = {}, {}, []
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (one last sample first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def by_label(self) -> dict[str, float]:
        """Peak RSS (MB) per kind of process, summed over processes of the same kind."""
        totals: dict[str, float] = {}
        for (_, label), rss in sorted(self.peak.items()):
            totals[label] = totals.get(label, 0.0) + rss
        return totals

    def cpu(self) -> CpuUse:
        """CPU used over the samples taken (a process that appeared midway counts from
        its first sample)."""
        secs = self._machine[-1][0] - self._machine[0][0] if len(self._machine) > 1 else 0.0
        cores = psutil.cpu_count() or 1
        by_label: dict[str, float] = {}
        main_threads: dict[str, float] = {}
        for pid, (process_secs, main_secs) in self._cpu_last.items():
            first_process, first_main = self._cpu_first[pid]
            label = self._labels[pid]
            by_label[label] = by_label.get(label, 0.0) + (process_secs - first_process)
            if label in MAIN_THREAD_LABELS:
                main_threads[label] = main_threads.get(label, 0.0) + (main_secs - first_main)
        busy = [
            (b1 - b0) / (t1 - t0) / cores
            for (t0, b0), (t1, b1) in itertools.pairwise(self._machine)
            if t1 > t0
        ]
        per_sec = (lambda value: round(value / secs, 3)) if secs > 0 else (lambda value: 0.0)
        return CpuUse(
            secs=round(secs, 2),
            cores=cores,
            by_label={label: per_sec(value) for label, value in by_label.items()},
            main_threads={label: per_sec(value) for label, value in main_threads.items()},
            machine=per_sec(self._machine[-1][1] - self._machine[0][1]) if busy else 0.0,
            saturated=round(sum(share >= SATURATED for share in busy) / len(busy), 3)
            if busy
            else 0.0,
        )


def main_thread_secs(process: psutil.Process) -> float:
    """CPU seconds (user + system) of the process's main thread, where a bot server runs
    its event loop.

    Raises:
        psutil.Error: the process is gone or cannot be read.
    """
    return next(
        (t.user_time + t.system_time for t in process.threads() if t.id == process.pid), 0.0
    )


def _machine_busy_secs() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot: user, nice,
    system, interrupts, and time a hypervisor took (steal); guests are already in user."""
    times = psutil.cpu_times()._asdict()
    return sum(
        times.get(kind, 0.0) for kind in ("user", "nice", "system", "irq", "softirq", "steal")
    )
