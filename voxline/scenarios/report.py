"""The suite's report: readable text, one JSON document, or JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from voxline.scenarios.run import ScenarioResult, SuiteResult


def _name(result: ScenarioResult, repeat: int) -> str:
    return result.loaded.label + (f" [run {result.attempt}]" if repeat > 1 else "")


def _latencies(result: ScenarioResult) -> str:
    parts = []
    for run in result.call.turns:
        if run.first_reply_ms is not None:
            v2v = run.stages_ms.get("voice_to_voice") if run.stages_ms else None
            pipeline = f" (pipeline {v2v:.0f})" if v2v is not None else ""
            parts.append(f"turn {run.index + 1} {run.first_reply_ms:.0f} ms{pipeline}")
    return "first reply heard: " + (", ".join(parts) if parts else "none")


def text_report(outcome: SuiteResult) -> str:
    """Per scenario: PASS/FAIL, the transcript as heard, what failed, the latencies."""
    lines: list[str] = []
    for result in outcome.results:
        mark = "PASS" if result.passed else "FAIL"
        lines.append(f"{mark} {_name(result, outcome.repeat)} ({result.wall_secs:.1f} s)")
        for who, words in result.call.transcript:
            lines.append(f"    {who:>6}: {words}")
        for run in result.call.turns:
            for call in run.tools:
                lines.append(f"    tool (turn {run.index + 1}): {call.name} {call.arguments}")
        lines.append(f"    {_latencies(result)}")
        if result.verdict is not None:
            lines.append(f"    judge: {result.verdict.verdict} ({result.verdict.reason})")
        for failure in result.failures:
            lines.append(f"    ✗ {failure}")
    passed = sum(result.passed for result in outcome.results)
    lines.append("")
    if outcome.repeat > 1:
        for label, (good, runs) in outcome.pass_rates().items():
            lines.append(f"pass rate {good}/{runs} ({100 * good / runs:.0f} %)  {label}")
    lines.append(
        f"{passed}/{len(outcome.results)} passed in {outcome.wall_secs:.1f} s "
        f"(parallel {outcome.parallel})"
    )
    return "\n".join(lines)


def json_report(outcome: SuiteResult) -> dict[str, Any]:
    """The whole run as one JSON-ready document."""
    return {
        "passed": outcome.passed,
        "wall_secs": outcome.wall_secs,
        "parallel": outcome.parallel,
        "repeat": outcome.repeat,
        "pass_rates": {
            label: {"passed": good, "runs": runs}
            for label, (good, runs) in outcome.pass_rates().items()
        },
        "scenarios": [
            {
                "file": str(result.loaded.path),
                "scenario": result.loaded.scenario.name,
                "persona": result.loaded.persona.name,
                "attempt": result.attempt,
                "passed": result.passed,
                "failures": result.failures,
                "wall_secs": result.wall_secs,
                "greeting_heard": result.call.greeting_heard,
                "transcript": [{"who": w, "words": t} for w, t in result.call.transcript],
                "judge": None if result.verdict is None else result.verdict.model_dump(),
                "turns": [
                    {
                        "turn": run.index + 1,
                        "caller": run.caller_said,
                        "heard": run.heard,
                        "reached": run.reached,
                        "first_reply_ms": run.first_reply_ms,
                        "stages_ms": run.stages_ms,
                        "tools": [
                            {"name": c.name, "arguments": c.arguments, "result": c.result}
                            for c in run.tools
                        ],
                        "call_ended": run.call_ended,
                        "transferred_to": run.transferred_to,
                    }
                    for run in result.call.turns
                ],
            }
            for result in outcome.results
        ],
    }


def write_junit(outcome: SuiteResult, path: Path) -> None:
    """JUnit XML: a test suite per scenario file, a test case per scenario run."""
    root = ElementTree.Element("testsuites", name="voxline test", time=f"{outcome.wall_secs:.2f}")
    suites: dict[Path, ElementTree.Element] = {}
    for result in outcome.results:
        file = result.loaded.path
        if file not in suites:
            suites[file] = ElementTree.SubElement(root, "testsuite", name=file.name)
        case = ElementTree.SubElement(
            suites[file],
            "testcase",
            classname=file.name.removesuffix(".yaml"),
            name=result.loaded.scenario.name
            + (f" [run {result.attempt}]" if outcome.repeat > 1 else ""),
            time=f"{result.wall_secs:.2f}",
        )
        if result.failures:
            failure = ElementTree.SubElement(case, "failure", message=result.failures[0])
            failure.text = "\n".join(result.failures)
        out = ElementTree.SubElement(case, "system-out")
        out.text = "\n".join(f"{who}: {words}" for who, words in result.call.transcript)
    for file, element in suites.items():
        cases = [r for r in outcome.results if r.loaded.path == file]
        element.set("tests", str(len(cases)))
        element.set("failures", str(sum(not r.passed for r in cases)))
    root.set("tests", str(len(outcome.results)))
    root.set("failures", str(sum(not r.passed for r in outcome.results)))
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
