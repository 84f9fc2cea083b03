"""Check a scenario's expectations against what happened in its call.

Replies are matched on what the caller heard: the bot's audio transcribed by
Whisper, not the text the LLM wrote. Both the heard text and the expected words
are normalised the same way (:func:`normalize`), so "$12.50", "12.50 dollars" and
"twelve dollars fifty" can be written either way; a phrase written ``/like this/``
is a regular expression, searched (case-insensitively) in the heard text as
Whisper wrote it and in its normalised form.
"""

from __future__ import annotations

import json
import re

from voxline.scenarios.call import CallRun, TurnRun
from voxline.scenarios.spec import HeardExpectations, Scenario, ToolExpectation, Turn, is_regex

_WORD_FOR = {"ok": "okay", "mr": "mister", "mrs": "missus", "dr": "doctor"}


def _spell(number: str, ordinal: str = "") -> str:
    from num2words import num2words

    digits = number.replace(",", "")
    try:
        if ordinal:
            return " " + num2words(int(digits), to="ordinal") + " "
        value: float | int = float(digits) if "." in digits else int(digits)
        return " " + num2words(value) + " "
    except (ValueError, OverflowError):
        return f" {number} "


def normalize(text: str) -> str:
    """Lower case; money, times, ordinals and numbers as words; no punctuation.

    ``$1,243.50`` -> ``one thousand two hundred forty three dollars fifty cents``;
    ``6:30`` -> ``six thirty``; ``12th`` -> ``twelfth``; ``p.m.`` -> ``pm``;
    ``ok`` -> ``okay``; hyphens, commas and "and" inside numbers go away.
    """
    text = text.lower().replace("%", " percent ").replace("&", " and ")
    text = re.sub(r"\b([ap])\.m\.?", r"\1m", text)
    text = re.sub(r"\$(\d[\d,]*)\.(\d\d)\b", r"\1 dollars \2 cents", text)
    text = re.sub(r"\$(\d[\d,]*(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(
        r"\b(\d{1,2}):(\d{2})\b", lambda m: f"{m[1]} {m[2] if m[2] != '00' else ''}", text
    )
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", lambda m: _spell(m[1], "ordinal"), text)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?", lambda m: _spell(m[0]), text)
    text = re.sub(r"[-,]", " ", text)
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    words = [_WORD_FOR.get(word, word) for word in text.split() if word != "and"]
    return " ".join(" ".join(words).split())


def heard_contains(heard: str, phrase: str) -> bool:
    """Whether ``phrase`` (words, or ``/regex/``) is in the heard text."""
    if is_regex(phrase):
        pattern = re.compile(phrase[1:-1], re.IGNORECASE)
        return bool(pattern.search(heard) or pattern.search(normalize(heard)))
    wanted = normalize(phrase)
    said = normalize(heard)
    if f" {wanted} " in f" {said} ":
        return True
    # Names are split or joined differently ("North Wind" for "Northwind"): the phrase
    # also matches whole heard words that spell it without the spaces.
    target, words = wanted.replace(" ", ""), said.split()
    for start in range(len(words)):
        joined = ""
        for word in words[start:]:
            joined += word
            if joined == target:
                return True
            if not target.startswith(joined):
                break
    return False


def _check_heard(where: str, heard: str, expected: HeardExpectations) -> list[str]:
    failures = []
    for phrase in expected.reply_contains:
        if not heard_contains(heard, phrase):
            failures.append(f"{where}: reply_contains {phrase!r}: the caller heard {heard!r}")
    for phrase in expected.reply_not_contains:
        if heard_contains(heard, phrase):
            failures.append(f"{where}: reply_not_contains {phrase!r}: the caller heard {heard!r}")
    return failures


def _called(run: TurnRun) -> str:
    return ", ".join(f"{call.name}({json.dumps(call.arguments)})" for call in run.tools)


def _check_tool(where: str, run: TurnRun, expected: ToolExpectation) -> str | None:
    named = [call for call in run.tools if call.name == expected.name]
    if not named:
        what = f"the bot called {_called(run)}" if run.tools else "the bot called no tool"
        return f"{where}: tool_called {expected.name}: {what}"
    for call in named:
        if all(m.matches(call.arguments.get(k)) for k, m in expected.arguments.items()):
            return None
    call = named[0]
    wrong = [
        f"{key} {matcher.describe()} (got {call.arguments.get(key)!r})"
        for key, matcher in expected.arguments.items()
        if not matcher.matches(call.arguments.get(key))
    ]
    return f"{where}: tool_called {expected.name}: arguments: {'; '.join(wrong)}"


def _check_turn(run: TurnRun, turn: Turn) -> list[str]:
    where = f"turn {run.index + 1}"
    if not run.reached:
        expects = turn.model_dump(exclude_defaults=True).keys() - {
            "say",
            "audio",
            "dtmf",
            "silence",
        }
        return [f"{where}: not reached: the call had ended before it"] if expects else []
    failures = _check_heard(where, run.heard, turn)
    for expected in turn.tool_called:
        if (problem := _check_tool(where, run, expected)) is not None:
            failures.append(problem)
    if turn.no_tool and run.tools:
        failures.append(f"{where}: no_tool: the bot called {_called(run)}")
    if turn.max_first_reply_ms is not None:
        if run.first_reply_ms is None:
            failures.append(f"{where}: max_first_reply_ms {turn.max_first_reply_ms:g}: no reply")
        elif run.first_reply_ms > turn.max_first_reply_ms:
            failures.append(
                f"{where}: max_first_reply_ms {turn.max_first_reply_ms:g}: the first reply came "
                f"after {run.first_reply_ms:.0f} ms"
            )
    if turn.call_ended is True and not run.call_ended:
        failures.append(f"{where}: call_ended: the bot did not end the call after this turn")
    if turn.call_ended is False and run.call_ended:
        failures.append(f"{where}: call_ended false: the bot ended the call")
    if turn.transferred_to is not None and turn.transferred_to not in run.transferred_to:
        to = ", ".join(run.transferred_to) or "nobody"
        failures.append(f"{where}: transferred_to {turn.transferred_to}: transferred to {to}")
    return failures


def check(scenario: Scenario, call: CallRun) -> list[str]:
    """Every expectation of ``scenario`` that ``call`` did not meet, one line each."""
    failures = []
    if call.error:
        failures.append(f"the call: {call.error}")
    if scenario.greeting is not None:
        failures += _check_heard("greeting", call.greeting_heard, scenario.greeting)
    for run, turn in zip(call.turns, scenario.turns, strict=True):
        failures += _check_turn(run, turn)
    return failures
