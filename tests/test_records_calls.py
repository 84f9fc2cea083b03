"""Call records end to end: ``voxline serve`` records a phone call and a browser call, and
``voxline calls show`` gives back both sides' words, the tool calls and every turn's stages;
the records survive a server killed with SIGKILL mid-call, and a restart.

One server (real llama.cpp, Whisper and Piper on loopback) with a persona whose LLM must
call a Python tool; records go to a SQLite file named relative to the config.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_log_content import DEPOT, HANDLER, PERSONA, QUESTION, REFERENCE, TOOL
from test_webrtc_browser import QUESTION as BROWSER_QUESTION
from test_webrtc_browser import call_from_browser, microphone

from tests.conftest import VOXLINE
from tests.servers import ServerProcess, start_voxline
from tests.speech import caller_voice, wer
from voxline.engines.llm import free_port
from voxline.records.models import CallRecord
from voxline.records.store import RecordStore
from voxline.transports.twilio_caller import TwilioCaller

pytestmark = pytest.mark.slow

AUTH_TOKEN = "test-auth-token-0123456789"
CALLER_NUMBER = "+15557654321"
FOLLOW_UP = "And when will it arrive at my house?"
THIRD = "Thank you, can you also tell me the opening hours of the depot?"
STAGES = ("stt", "llm_first_token", "first_chunk", "tts_first_audio", "voice_to_voice")


def write_config(tmp: Path, port: int) -> Path:
    config = tmp / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: parcels.yaml
            records_url: sqlite:///records.sqlite3
            engines:
              llm: {{backend: llama_cpp}}
            """
        )
    )
    return config


def start(tmp: Path) -> tuple[ServerProcess, str]:
    port = free_port()
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
        "PARCEL_LOG": str(tmp / "parcel.log"),
    }
    return start_voxline(write_config(tmp, port), env, port), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("records")
    (tmp / "tools").mkdir()
    (tmp / "tools" / "track_parcel.yaml").write_text(TOOL)
    (tmp / "tools" / "parcels.py").write_text(HANDLER)
    (tmp / "parcels.yaml").write_text(PERSONA)
    server, url = start(tmp)
    state = {"tmp": tmp, "server": server, "url": url}
    yield state
    state["server"].stop()


def speech(text: str) -> np.ndarray:
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(text), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def calls(served: dict, *args: str) -> subprocess.CompletedProcess:
    """``voxline calls ...`` with the server's config, as an operator runs it."""
    config = str(served["tmp"] / "voxline.yaml")
    return subprocess.run(
        [VOXLINE, "calls", *args, "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
    )


def shown(served: dict, call_id: str) -> CallRecord:
    result = calls(served, "show", call_id, "--json")
    assert result.returncode == 0, result.stderr
    return CallRecord.model_validate_json(result.stdout)


async def recorded(served: dict, call_id: str, ready, timeout: float = 60.0) -> CallRecord | None:
    """Poll the records (under a deadline) until the call's record satisfies ``ready``."""
    store = RecordStore(f"sqlite:///{served['tmp'] / 'records.sqlite3'}")
    try:

        async def poll() -> CallRecord:
            while True:
                record = await store.call(call_id)
                if record is not None and ready(record):
                    return record
                await asyncio.sleep(0.2)  # polling the database, under a deadline

        return await asyncio.wait_for(poll(), timeout)
    finally:
        await store.close()


def check_answered(turns: list, question: str):
    """The question's answer: its words, the words heard back, the forced tool call with
    its arguments, result and duration, and every stage's latency. Returns the answered
    turn.

    The question may span several turns: a pause, or Whisper's question mark committing
    "where is my parcel?" before the caller goes on. Its turns are the first ones whose
    words together come closest to the question; the answer is the last of them that
    called the tool.
    """

    def caller_words(count: int) -> str:
        return " ".join(turn.caller_text for turn in turns[:count])

    spoken = min(range(1, len(turns) + 1), key=lambda count: wer(question, caller_words(count)))
    assert wer(question, caller_words(spoken)) <= 0.3, [turn.caller_text for turn in turns]
    answered = max(
        (i for i, turn in enumerate(turns[:spoken]) if turn.finished and turn.tools), default=None
    )
    assert answered is not None, turns
    turn = turns[answered]
    assert turn.bot_heard, turn
    assert [tool.name for tool in turn.tools] == ["track_parcel"], turn.tools
    assert turn.tools[0].arguments == {"reference": REFERENCE}
    assert DEPOT in json.dumps(turn.tools[0].result)
    assert turn.tools[0].duration_ms is not None
    missing = [stage for stage in STAGES if turn.latency_ms.get(stage) is None]
    assert not missing, (missing, turn.latency_ms)
    assert all(set(STAGES) <= set(other.latency_ms) for other in turns)
    return turn


def test_a_phone_call_is_recorded_with_both_sides_tools_and_stages(served):
    dialer = TwilioCaller(served["url"], auth_token=AUTH_TOKEN, caller_id=CALLER_NUMBER)
    voice = caller_voice()
    # The caller hangs up as soon as the second answer starts: that turn is unfinished.
    asyncio.run(
        dialer.call(
            speech(QUESTION),
            voice.sample_rate,
            then=[(speech(FOLLOW_UP), 0.8)],
            hang_up_after_quiet=-1,
            timeout=150,
        )
    )
    asyncio.run(recorded(served, dialer.call_sid, lambda record: record.end_reason is not None))
    call = shown(served, dialer.call_sid)  # by its Twilio CallSid
    assert (call.persona, call.transport, call.caller) == ("parcels", "twilio", CALLER_NUMBER)
    assert call.call_sid == dialer.call_sid and call.end_reason == "caller hung up"
    assert call.greeting_heard and "parcel" in call.greeting_heard.lower()
    turns = call.turn_records
    print("\n" + calls(served, "show", call.id).stdout)
    assert len(turns) >= 2, turns
    check_answered(turns, QUESTION)
    assert all(turn.finished for turn in turns[:-1])
    assert not turns[-1].finished, "the turn the caller hung up on is recorded, unfinished"
    text = calls(served, "show", call.id[:8]).stdout
    assert "unfinished" in text and "track_parcel" in text and "voice_to_voice=" in text
    listed = json.loads(calls(served, "list", "--persona", "parcels", "--json").stdout)
    assert call.id in [row["id"] for row in listed]


def test_a_browser_call_is_recorded(served):
    wav = microphone(served["tmp"], BROWSER_QUESTION, "browser")
    report = asyncio.run(call_from_browser(served["url"], wav))
    assert any(event["type"] == "turn" for event in report["events"])
    listed = json.loads(calls(served, "list", "--json").stdout)
    browser = [row for row in listed if row["transport"] == "webrtc"]
    assert browser and browser[0]["caller"] == "demo", listed
    record = asyncio.run(recorded(served, browser[0]["id"], lambda r: r.ended_at is not None))
    assert record is not None
    call = shown(served, record.id)
    print("\n" + calls(served, "show", call.id).stdout)
    check_answered(call.turn_records, BROWSER_QUESTION)


def test_records_survive_sigkill_mid_call_and_a_restart(served):
    before = {row["id"] for row in json.loads(calls(served, "list", "--json").stdout)}
    dialer = TwilioCaller(served["url"], auth_token=AUTH_TOKEN, caller_id=CALLER_NUMBER)
    voice = caller_voice()
    server: ServerProcess = served["server"]

    async def call_then_kill() -> CallRecord | None:
        call = asyncio.create_task(
            dialer.call(
                speech(QUESTION),
                voice.sample_rate,
                then=[(speech(FOLLOW_UP), 0.8), (speech(THIRD), 0.8)],
                timeout=150,
            )
        )
        try:
            # Two turns written, and the question's answer heard as check_answered finds it
            # (the last mark's echo can come a little after its turn ended: the phone
            # output writes ahead of the caller's ear, and an earlier part of the question
            # may have had an answer heard already): the server dies in the middle of the
            # call.
            def answered_twice(r: CallRecord) -> bool:
                if len(r.turn_records) < 2:
                    return False
                try:
                    check_answered(r.turn_records, QUESTION)
                except AssertionError:
                    return False
                return True

            record = await recorded(served, dialer.call_sid, answered_twice, timeout=120)
            os.killpg(server.process.pid, signal.SIGKILL)
        finally:
            await asyncio.gather(call, return_exceptions=True)
        return record

    at_kill = asyncio.run(call_then_kill())
    assert at_kill is not None
    assert server.process.wait(10) == -signal.SIGKILL
    after = shown(served, dialer.call_sid)
    assert after.end_reason is None and after.ended_at is None  # it never ended
    finished = [turn for turn in after.turn_records if turn.finished]
    assert len(finished) >= 2, after.turn_records
    check_answered(after.turn_records, QUESTION)
    served["server"], served["url"] = start(served["tmp"])  # the same records file
    listed = {row["id"] for row in json.loads(calls(served, "list", "--json").stdout)}
    assert before | {after.id} <= listed
    again = shown(served, after.id)
    assert [turn.turn for turn in again.turn_records] == [t.turn for t in after.turn_records]
