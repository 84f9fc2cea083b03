"""Measurements shared by the benchmarks: process memory and percentiles."""

from __future__ import annotations

from pathlib import Path

# Caller questions for the bank persona, one per simulated call or round.
QUESTIONS = [
    "What is my account balance?",
    "What time does the branch open on Saturday?",
    "I lost my card yesterday, what should I do?",
    "Can I speak to a human agent please?",
    "How long does a new card take to arrive?",
    "Do you charge a fee for international transfers?",
    "Is the branch open on Sunday?",
    "My card was declined at the store, why?",
]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the LLM server), in MB."""
    total = 0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split()[3]) == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
