"""Memory of a whole stack: the RSS of every process under some roots, sampled in a thread.

The server under test is found by the port it listens on when it runs on this
machine; its children (the LLM server and its workers) are counted with it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import urlsplit

import psutil

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


class StackMemory:
    """Samples the RSS of every process in the trees under ``roots`` in a thread.

    Between :meth:`start` and :meth:`stop` it keeps, per process (pid and label), the
    largest RSS seen, and the largest sum over the whole stack at one sample.

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

    def sample(self) -> float:
        """One sample; returns the stack's total RSS in MB."""
        total = 0.0
        for root in self.roots:
            try:
                top = psutil.Process(root)
                processes = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for process in processes:
                try:
                    rss = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if process.pid not in self._labels:
                    self._labels[process.pid] = process_label(process)
                key = (process.pid, self._labels[process.pid])
                self.peak[key] = max(self.peak.get(key, 0.0), rss)
                total += rss
        self.peak_total = max(self.peak_total, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> StackMemory:
        """Forget the peaks and sample from now on."""
        self.peak, self.peak_total = {}, 0.0
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
