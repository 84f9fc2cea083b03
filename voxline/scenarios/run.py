"""Run a suite of scenarios as concurrent calls on one Runtime, and check each.

Scenarios run ``parallel`` at a time, each a real call on the Runtime's shared
engines (one Whisper, one voice, one LLM server for all of them), so a suite
takes about as long as its longest calls, not their sum. ``repeat`` runs every
scenario that many times, for a pass rate where an LLM's answer varies.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from voxline.bot.runtime import Runtime
from voxline.scenarios.call import CallRun, run_call
from voxline.scenarios.checks import check
from voxline.scenarios.judge import JudgeError, Verdict, judge
from voxline.scenarios.load import LoadedScenario, Suite
from voxline.scenarios.spec import Judge
from voxline.scenarios.standin import start_stand_ins, stop_stand_ins
from voxline.scenarios.voices import CallerVoices


@dataclass
class ScenarioResult:
    """One run of one scenario."""

    loaded: LoadedScenario
    attempt: int
    call: CallRun
    failures: list[str]
    wall_secs: float
    verdict: Verdict | None = None

    @property
    def passed(self) -> bool:
        """Whether every expectation held."""
        return not self.failures


@dataclass
class SuiteResult:
    """Every run, in the order of the files, and how long the suite took."""

    results: list[ScenarioResult] = field(default_factory=list)
    wall_secs: float = 0.0
    parallel: int = 1
    repeat: int = 1

    @property
    def passed(self) -> bool:
        """Whether every run of every scenario passed."""
        return all(result.passed for result in self.results)

    def pass_rates(self) -> dict[str, tuple[int, int]]:
        """Per scenario label: (runs passed, runs)."""
        rates: dict[str, tuple[int, int]] = {}
        for result in self.results:
            passed, runs = rates.get(result.loaded.label, (0, 0))
            rates[result.loaded.label] = (passed + result.passed, runs + 1)
        return rates


async def _run_one(
    loaded: LoadedScenario, attempt: int, runtime: Runtime, voices: CallerVoices, judge_of
) -> ScenarioResult:
    started = time.monotonic()
    call = await run_call(loaded, runtime, voices)
    failures = check(loaded.scenario, call)
    verdict = None
    if loaded.scenario.judge:
        endpoint = runtime.llm_endpoint(loaded.persona)
        try:
            verdict = await judge(
                loaded.scenario.judge,
                call.transcript,
                judge_of(loaded),
                default_base_url=endpoint.base_url,
                default_model=endpoint.model,
            )
        except JudgeError as exc:
            failures.append(f"judge: {exc}")
        else:
            if not verdict.passed:
                failures.append(f"judge {loaded.scenario.judge!r}: no ({verdict.reason})")
    return ScenarioResult(loaded, attempt, call, failures, round(time.monotonic() - started, 2),
                          verdict)  # fmt: skip


async def run_suite(
    suite: Suite,
    runtime: Runtime,
    *,
    parallel: int = 4,
    repeat: int = 1,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> SuiteResult:
    """Run every scenario ``repeat`` times, ``parallel`` calls at a time.

    The engines are loaded and the caller clips synthesized first: the wall time
    counts the calls, not the start-up.
    """
    voices = CallerVoices()
    await voices.prepare(
        [
            (loaded.scenario.voice, turn.say)
            for loaded in suite.scenarios
            for turn in loaded.scenario.turns
            if turn.say
        ]
    )
    for loaded in suite.scenarios:
        await runtime.prepare(loaded.persona)
    by_file = {path: document for path, document in suite.files}

    def judge_of(loaded: LoadedScenario) -> Judge:
        return by_file[loaded.path].judge

    saved = {name: os.environ.get(name) for _, doc in suite.files for name in doc.env}
    for _, document in suite.files:
        os.environ.update(document.env)
    stand_ins = await start_stand_ins(
        [stand_in for _, document in suite.files for stand_in in document.stand_ins]
    )
    slots = asyncio.Semaphore(max(1, parallel))
    outcome = SuiteResult(parallel=parallel, repeat=repeat)

    async def one(loaded: LoadedScenario, attempt: int) -> ScenarioResult:
        async with slots:
            result = await _run_one(loaded, attempt, runtime, voices, judge_of)
        if on_result is not None:
            on_result(result)
        return result

    started = time.monotonic()
    try:
        outcome.results = list(
            await asyncio.gather(
                *(
                    one(loaded, attempt)
                    for attempt in range(1, repeat + 1)
                    for loaded in suite.scenarios
                )
            )
        )
    finally:
        outcome.wall_secs = round(time.monotonic() - started, 2)
        await stop_stand_ins(stand_ins)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    order = {id(loaded): position for position, loaded in enumerate(suite.scenarios)}
    outcome.results.sort(key=lambda result: (result.attempt, order[id(result.loaded)]))
    return outcome
