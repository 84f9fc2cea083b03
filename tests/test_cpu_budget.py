"""The CPU budget: thread counts per engine, sized from the cores this process may use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from voxline.config import ServerConfig
from voxline.cpu_budget import MAX_THREADS_PER_CORE, available_cores, cpu_budget
from voxline.engine_config import EnginesConfig, PiperConfig


@pytest.mark.parametrize("cores", [1, 2, 8, 64])
def test_cpu_budget_gives_sane_counts(cores: int):
    budget = cpu_budget(cores)
    counts = budget.table()
    assert all(value >= 1 for value in counts.values()), counts
    assert budget.llm_threads <= cores
    if cores >= 2:
        assert budget.llm_threads < cores, "the LLM leaves a core to the other engines"
    assert budget.whisper_workers * budget.whisper_threads <= cores
    assert budget.piper_workers * budget.piper_threads <= max(2, cores)
    assert budget.whisper_threads == budget.piper_threads == budget.turn_threads == 1
    assert budget.total_threads <= MAX_THREADS_PER_CORE * cores
    if cores >= 2:
        assert budget.piper_workers >= 2, "one Piper worker is kept for first chunks"


def test_cpu_budget_on_two_cores_stays_under_its_bound():
    budget = cpu_budget(2)
    assert budget.total_threads <= 8  # MAX_THREADS_PER_CORE * 2, the bound docs/cpu.md states
    # The LLM leaves a core to Whisper and Piper (benchmarks/llm_threads.py).
    assert (budget.llm_threads, budget.whisper_workers, budget.piper_workers) == (1, 2, 2)
    assert budget.total_threads == 6


def test_server_config_takes_unset_counts_from_the_budget():
    config = ServerConfig(engines=EnginesConfig(cpu_cores=2))
    assert config.engines.whisper.num_workers == 2
    assert config.engines.whisper.cpu_threads == 1
    assert (config.engines.piper.workers, config.engines.piper.threads) == (2, 1)
    assert config.engines.llm.n_threads == 1 and config.engines.vllm.cpu_threads == 1
    explicit = EnginesConfig(cpu_cores=64, piper=PiperConfig(workers=3, threads=2))
    assert (explicit.piper.workers, explicit.piper.threads) == (3, 2)
    assert explicit.llm.n_threads == cpu_budget(64).llm_threads
    with pytest.raises(ValueError):
        cpu_budget(0)


def fake_cgroup(root, v2: str | None = None, v1: tuple[int, int] | None = None):
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return root


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("100000 100000", None, 1),
        ("150000 100000", None, 2),  # 1.5 CPUs: two cores, each partly
        ("max 100000", None, None),
        (None, (50000, 100000), 1),
        (None, (-1, 100000), None),
        (None, None, None),
    ],
)
def test_available_cores_follow_the_containers_cpu_limit(tmp_path, v2, v1, quota):
    # A container limited to fewer CPUs than the host has must not size its engines
    # for the host: docker --cpus and Kubernetes limits.cpu set these files.
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if quota is None else min(affinity, quota)
    assert available_cores(fake_cgroup(tmp_path, v2, v1)) == expected


def test_available_cores_follow_the_process_cpu_affinity():
    # taskset pins the process to one core, as a CPU set of a container or a pod does.
    shown = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-c",
            "from voxline.cpu_budget import available_cores, cpu_budget;"
            "print(available_cores(), cpu_budget().cores)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert shown.stdout.split() == ["1", "1"]
