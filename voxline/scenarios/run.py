"""Run a suite of scenarios as concurrent calls on one Runtime, and check each.

Scenarios run ``parallel`` at a time, each a real call on the Runtime's shared
engines (one Whisper, one voice, one LLM server for all of them), so a suite
takes about as long as its longest calls, not their sum. ``repeat`` runs every
scenario that many times, for a pass rate where an LLM's answer varies.

The bot's replies are transcribed (what the caller heard) only once the calls are
over: the harness's own listening takes as much Whisper time as the calls do, and
done beside them it would slow the very calls whose latency the scenarios check.
Calls keep their audio until then, up to :data:`MAX_UNHEARD_SECS` of it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from voxline.bot.runtime import Runtime
from voxline.scenarios.call import CallRun, listen, run_call
from voxline.scenarios.checks import check
from voxline.scenarios.judge import JudgeError, Verdict, judge
from voxline.scenarios.load import LoadedScenario, Suite
from voxline.scenarios.spec import Judge
from voxline.scenarios.standin import start_stand_ins, stop_stand_ins
from voxline.scenarios.voices import CallerVoices

MAX_UNHEARD_SECS = 600.0
"""Replies kept for transcription after the calls (~26 MB at 22 kHz); beyond it the
call that crossed the mark has the backlog transcribed at once."""
LISTENING_PIECES = 16
"""Replies in Whisper's queue at once: two full batches, well within its ``max_queue``."""


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


async def _check_one(
    loaded: LoadedScenario, attempt: int, call: CallRun, wall_secs: float, runtime: Runtime,
    judge_of: Callable[[LoadedScenario], Judge],
) -> ScenarioResult:  # fmt: skip
    failures = check(loaded.scenario, call)
    verdict = None
    if loaded.scenario.judge:
        endpoint = runtime.llm.endpoint(loaded.persona)
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
    return ScenarioResult(loaded, attempt, call, failures, wall_secs, verdict)


async def run_suite(
    suite: Suite,
    runtime: Runtime,
    *,
    parallel: int = 4,
    repeat: int = 1,
    on_result: Callable[[ScenarioResult], None] | None = None,
    on_call_ended: Callable[[LoadedScenario, float], None] | None = None,
) -> SuiteResult:
    """Run every scenario ``repeat`` times, ``parallel`` calls at a time.

    The engines are loaded and the caller clips synthesized first: the wall time
    counts the calls and the listening to their replies, not the start-up.
    ``on_call_ended(scenario, wall_secs)`` hears each call as it ends; ``on_result``
    each checked result, once the replies have been transcribed after the last call.
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

    listening = asyncio.Semaphore(LISTENING_PIECES)
    unheard: list[tuple[LoadedScenario, CallRun]] = []

    async def hear(calls: list[tuple[LoadedScenario, CallRun]]) -> None:
        await asyncio.gather(*(listen(loaded, runtime, call, listening) for loaded, call in calls))

    async def call_one(loaded: LoadedScenario, attempt: int) -> tuple[CallRun, float]:
        async with slots:
            began = time.monotonic()
            call = await run_call(loaded, runtime, voices)
            wall_secs = round(time.monotonic() - began, 2)
        if on_call_ended is not None:
            on_call_ended(loaded, wall_secs)
        unheard.append((loaded, call))
        if sum(waiting.unheard_secs for _, waiting in unheard) > MAX_UNHEARD_SECS:
            backlog = unheard[:]
            unheard.clear()
            await hear(backlog)
        return call, wall_secs

    async def check_one(loaded: LoadedScenario, attempt: int, call: CallRun, wall_secs: float):
        async with slots:  # a judge is one more request to the LLM server
            result = await _check_one(loaded, attempt, call, wall_secs, runtime, judge_of)
        if on_result is not None:
            on_result(result)
        return result

    runs = [(loaded, attempt) for attempt in range(1, repeat + 1) for loaded in suite.scenarios]
    started = time.monotonic()
    try:
        calls = await asyncio.gather(*(call_one(loaded, attempt) for loaded, attempt in runs))
        await hear(unheard)
        outcome.results = list(
            await asyncio.gather(
                *(
                    check_one(loaded, attempt, call, wall_secs)
                    for (loaded, attempt), (call, wall_secs) in zip(runs, calls, strict=True)
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
