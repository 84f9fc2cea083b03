"""``voxline test``: scenario files spoken through the real pipeline, checked on what was heard.

The light tests check the scenario files and the matching rules; the call tests run
``voxline test`` as a user would (its own Runtime: Whisper, Piper, llama.cpp with
SmolLM2), with scenarios that must pass and scenarios that must fail, and read its
JSON and JUnit output.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest

from tests.conftest import BANK_PERSONA, VOXLINE
from tests.speech import synthesize_wav
from voxline.scenarios.checks import heard_contains, normalize
from voxline.scenarios.spec import ArgumentMatcher

BANK_GREETING_END = "how can I help you today"


def run_test_command(args: list[str], env: dict[str, str], timeout: float = 600):
    return subprocess.run(
        [VOXLINE, "test", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_bad_scenario_files_exit_2_with_one_line_each(tmp_path, voxline_env):
    scenarios = tmp_path / "bank.tests.yaml"
    scenarios.write_text(
        f"""persona: {BANK_PERSONA}
scenarios:
  - name: fine
    turns: [{{say: hello}}]
  - name: misspelt expectation
    turns:
      - say: What is my balance?
        reply_contians: balance
  - name: missing clip
    turns:
      - audio: clips/nowhere.wav
  - name: restaurant tool
    tool_results: {{book_table: {{id: 7}}}}
    turns:
      - say: Book me a table.
        tool_called: book_table
  - name: two actions
    turns:
      - say: hello
        dtmf: "1#"
"""
    )
    result = run_test_command([str(scenarios)], voxline_env, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    print("\n".join(lines))
    expected = [
        "scenario 'misspelt expectation': turns[0].reply_contians: unknown field",
        "scenario 'two actions': turns[0]: give exactly one of say, audio, dtmf or silence",
        "scenario 'missing clip': turns[0].audio: input audio not found",
        "scenario 'restaurant tool': tool_results.book_table: persona bank_support has no "
        "such tool (get_balance, list_recent_transactions, end_call)",
        "scenario 'restaurant tool': turns[0].tool_called: persona bank_support has no tool "
        "'book_table'",
    ]
    assert len(lines) == len(expected), lines
    for line, wanted in zip(sorted(lines), sorted(expected), strict=True):
        assert line.startswith(f"voxline: error: {scenarios}: "), line
        assert wanted in line, (wanted, line)
    assert "Traceback" not in result.stderr


def test_a_scenario_file_without_its_persona_or_scenarios_is_refused(tmp_path, voxline_env):
    lonely = tmp_path / "shop.tests.yaml"
    lonely.write_text("scenarios:\n  - name: x\n    turns: [{say: hi}]\n")
    empty = tmp_path / "empty.tests.yaml"
    empty.write_text(f"persona: {BANK_PERSONA}\nscenarios: []\nextra: 1\n")
    result = run_test_command([str(lonely), str(empty)], voxline_env, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(f"{lonely}: persona: " in line and "shop.yaml does not exist" in line
               for line in lines), lines  # fmt: skip
    assert any(f"{empty}: extra: unknown field" in line for line in lines), lines
    assert any(f"{empty}: scenarios: expected a list of one or more" in line for line in lines)


def test_heard_text_is_normalised_for_numbers_money_and_times():
    assert normalize("Your balance is $1,243.50.") == (
        "your balance is one thousand two hundred forty three dollars fifty cents"
    )
    assert heard_contains("A table for 4 at 7:30 p.m. on the 12th.", "table for four")
    assert heard_contains("A table for 4 at 7:30 p.m. on the 12th.", "seven thirty pm")
    assert heard_contains("A table for 4 at 7:30 p.m. on the 12th.", "twelfth")
    assert heard_contains("That's 1,243 dollars and 50 cents.", "$1,243.50")
    assert not heard_contains("A table for forty", "table for four")
    assert heard_contains("I booked it, Rossi.", "/book(ed|ing)/")
    assert not heard_contains("Goodbye", "good")  # words, not parts of words


def test_argument_matchers():
    assert ArgumentMatcher.model_validate("4821").matches("4821")
    assert ArgumentMatcher.model_validate(4).matches("4")
    assert not ArgumentMatcher.model_validate("4821").matches("1177")
    assert ArgumentMatcher.model_validate({"regex": "[0-9]{4}"}).matches("4821")
    assert not ArgumentMatcher.model_validate({"regex": "[0-9]{4}"}).matches("48210")
    assert ArgumentMatcher.model_validate({"any": True}).matches("x")
    assert not ArgumentMatcher.model_validate({"any": True}).matches(None)


CALLS = """persona: {persona}
scenarios:
  - name: expects get_balance
    tool_choice: get_balance
    tool_results:
      get_balance: {{account: checking, balance: "52.10", currency: USD}}
    turns:
      - say: What is the balance of my checking account?
        tool_called: get_balance
  - name: expects another tool
    tool_choice: get_balance
    tool_results:
      get_balance: {{account: checking, balance: "52.10", currency: USD}}
    turns:
      - say: What is the balance of my checking account?
        tool_called: list_recent_transactions
  - name: greeting heard whole
    greeting:
      reply_contains: {greeting_end}
    turns:
      - say: Hello there.
  - name: a recorded clip, a pause and an espeak-ng voice
    voice: {{engine: espeak, speed: 0.9}}
    turns:
      - audio: caller.wav
        no_tool: true
      - silence: 1.0
      - say: Thank you.
  - name: greeting cut by a barge-in
    greeting:
      reply_contains: {greeting_end}
    turns:
      - say: Sorry, I lost my card yesterday.
        barge_in_after: 1.0
"""


SWITCHBOARD = """name: switchboard
prompt: You are a switchboard. Transfer callers who ask for a person to +15550100200.
greeting: Switchboard.
tools: [transfer_call]
"""

TRANSFERS = """persona: switchboard.yaml
scenarios:
  - name: transfer to another number than expected
    tool_choice: transfer_call
    turns:
      - say: Can I speak to a person, please?
        tool_called: transfer_call
        transferred_to: "+15559999999"
"""


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> dict:
    import os

    tmp = tmp_path_factory.mktemp("scenarios")
    path = tmp / "calls.tests.yaml"
    path.write_text(CALLS.format(persona=BANK_PERSONA, greeting_end=BANK_GREETING_END))
    (tmp / "switchboard.yaml").write_text(SWITCHBOARD)
    transfers = tmp / "transfers.tests.yaml"
    transfers.write_text(TRANSFERS)
    synthesize_wav("When does the branch open on Saturday?", tmp / "caller.wav")
    junit = tmp / "report.xml"
    env = {**os.environ, "VOXLINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    arguments = [str(path), str(transfers), "--parallel", "4", "--json", "--junit", str(junit)]
    result = run_test_command(arguments, env)
    print(result.stderr[-3000:])
    assert result.stdout.strip(), result.stderr[-3000:]
    document = json.loads(result.stdout)
    for scenario in document["scenarios"]:
        print(scenario["scenario"], "passed" if scenario["passed"] else scenario["failures"])
        for line in scenario["transcript"]:
            print(f"   {line['who']}: {line['words']}")
    return {
        "code": result.returncode,
        "document": document,
        "by_name": {s["scenario"]: s for s in document["scenarios"]},
        "junit": junit,
    }


def test_a_failing_scenario_makes_the_command_exit_1_and_fails_in_junit(calls):
    assert calls["code"] == 1
    root = ElementTree.parse(calls["junit"]).getroot()
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert set(cases) == set(calls["by_name"])
    assert cases["expects another tool"].find("failure") is not None
    assert cases["expects get_balance"].find("failure") is None
    assert root.get("tests") == "6"


def test_expected_tool_passes_when_called_and_fails_naming_the_other(calls):
    passing, failing = (
        calls["by_name"]["expects get_balance"],
        calls["by_name"]["expects another tool"],
    )
    assert passing["passed"], passing["failures"]
    [tool] = passing["turns"][0]["tools"]
    assert tool["name"] == "get_balance" and tool["result"]["result"]["balance"] == "52.10"
    assert not failing["passed"]
    [message] = failing["failures"]
    assert message.startswith(
        "turn 1: tool_called list_recent_transactions: the bot called get_balance("
    )


def test_reply_contains_is_checked_on_the_audio_as_heard(calls):
    whole = calls["by_name"]["greeting heard whole"]
    cut = calls["by_name"]["greeting cut by a barge-in"]
    assert whole["passed"], whole["failures"]
    assert normalize(BANK_GREETING_END) in normalize(whole["greeting_heard"])
    # The same greeting text went to TTS; the caller spoke over it after 1 s and
    # heard only its start, so the words it did not hear fail the expectation.
    assert not cut["passed"]
    [message] = cut["failures"]
    assert message.startswith(f"greeting: reply_contains '{BANK_GREETING_END}': the caller heard")
    assert heard_contains(cut["greeting_heard"], "hello")  # its start was heard
    assert normalize(BANK_GREETING_END) not in normalize(cut["greeting_heard"])


def test_report_carries_latencies_and_the_transcript_of_both_sides(calls):
    scenario = calls["by_name"]["greeting heard whole"]
    [turn] = scenario["turns"]
    assert turn["first_reply_ms"] is not None and turn["first_reply_ms"] > 0
    assert [line["who"] for line in scenario["transcript"]][:2] == ["bot", "caller"]
    assert calls["document"]["wall_secs"] > 0


def test_clip_silence_and_espeak_turns_are_spoken_and_answered(calls):
    scenario = calls["by_name"]["a recorded clip, a pause and an espeak-ng voice"]
    assert scenario["passed"], scenario["failures"]
    clip, pause, spoken = scenario["turns"]
    assert clip["caller"].startswith("(audio ") and clip["heard"], clip
    assert clip["first_reply_ms"] is not None
    assert pause["caller"] == "(silent 1 s)"
    assert spoken["reached"] and spoken["heard"], spoken


def test_the_judges_answer_is_read_as_a_verdict_or_refused():
    from voxline.scenarios.judge import JudgeError, parse_verdict

    assert parse_verdict('Sure: {"verdict": "yes", "reason": "it greets"}').passed
    assert not parse_verdict('{"verdict": "no", "reason": "it gave advice"}').passed
    assert not parse_verdict("No. It recommends bitcoin.").passed
    with pytest.raises(JudgeError, match="not a verdict"):
        parse_verdict("It depends on the caller.")


def test_a_transfer_is_noted_with_its_number_and_ends_the_call(calls):
    scenario = calls["by_name"]["transfer to another number than expected"]
    [turn] = scenario["turns"]
    assert len(turn["tools"]) == 1, scenario
    [tool] = turn["tools"]
    assert tool["name"] == "transfer_call" and "error" not in tool["result"], tool
    number = tool["arguments"]["number"]
    # The transport carried out the transfer with the LLM's number, which ended the call;
    # the expectation names another number, so the scenario fails and says which.
    assert turn["transferred_to"] == [number] and turn["call_ended"], turn
    assert not scenario["passed"]
    assert scenario["failures"] == [
        f"turn 1: transferred_to +15559999999: transferred to {number}"
    ], scenario["failures"]
