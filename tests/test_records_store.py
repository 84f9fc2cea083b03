"""Call records on a real SQLite file: what the writer keeps, a full disk, a full queue, and
``voxline calls`` with bad input. The end-to-end tests (a phone call, a browser call, a
server killed mid-call, PostgreSQL) are in test_records_calls.py and test_records_postgres.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from tests.conftest import VOXLINE
from voxline.bot.call_events import CallEvents, CallInfo
from voxline.config import ServerConfig
from voxline.processors.turn_trace import TurnTrace
from voxline.records.settings import RecordsConfig
from voxline.records.store import RecordStore, RecordsUnavailableError
from voxline.records.writer import RecordWriter, attached, open_writer

MS = 1_000_000
CALL_SID = "CA" + "7" * 32


def a_call() -> CallInfo:
    info = CallInfo(persona="parcels", transport="twilio", caller="+15557654321", call_sid=CALL_SID)
    info.called = "+15550100000"
    info.clock_origin_ns = 1_790_000_000_000_000_000
    return info


def a_turn(index: int, *, complete: bool = True) -> TurnTrace:
    start = index * 5_000 * MS
    turn = TurnTrace(
        index=index,
        caller_text=f"question {index}",
        bot_text=f"answer {index}",
        speech_end=start,
        stt_request=start + 100 * MS,
        transcribed=start + 300 * MS,
        llm_first_token=start + 500 * MS,
        first_chunk=start + 550 * MS,
        tts_first_audio=start + 650 * MS,
        audio_out=start + 700 * MS,
        complete=complete,
    )
    turn.tool_calls.append(
        {"name": "track_parcel", "arguments": {"reference": "Z-1"}, "result": {"depot": "D-9"}}
    )
    turn.tool_times.append((start + 320 * MS, start + 332 * MS))
    return turn


def record(writer: RecordWriter, info: CallInfo, turns: int) -> None:
    """A call as the hub reports it: start, turns, what was heard, the end with a turn open."""
    writer.call_started(info)
    writer.bot_heard(info, 0, "Hello, parcel desk.", False)
    for index in range(1, turns + 1):
        writer.turn_finished(info, a_turn(index))
        writer.bot_heard(info, index, f"answer {index}", False)
    writer.call_ended(info, "caller hung up", a_turn(turns + 1, complete=False))


async def written(writer: RecordWriter, timeout: float = 10.0) -> None:
    async def drained() -> None:
        while writer.waiting:
            await asyncio.sleep(0.01)  # polling the writer's counter, under a deadline

    await asyncio.wait_for(drained(), timeout)


def test_a_call_is_recorded_and_read_back_by_id_prefix_and_call_sid(tmp_path: Path):
    async def scenario() -> None:
        store = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        await store.open()
        writer = RecordWriter(store, RecordsConfig())
        info = a_call()
        async with attached(writer, CallEvents()):
            record(writer, info, turns=2)
        reader = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        try:
            by_sid = await reader.call(CALL_SID)
            assert by_sid is not None and by_sid.id == info.call_id
            call = await reader.call(info.call_id[:8])
            assert call is not None
            assert (call.persona, call.caller, call.called) == (
                "parcels",
                "+15557654321",
                "+15550100000",
            )
            assert call.end_reason == "caller hung up" and call.ended_at is not None
            assert call.greeting_heard == "Hello, parcel desk."
            assert [turn.finished for turn in call.turn_records] == [True, True, False]
            first = call.turn_records[0]
            assert first.caller_text == "question 1" and first.bot_heard == "answer 1"
            assert first.latency_ms["stt"] == 200.0 and first.latency_ms["voice_to_voice"] == 700
            assert first.timeline_ms["speech_end"] == 5000.0
            assert first.tools[0].arguments == {"reference": "Z-1"}
            assert first.tools[0].result == {"depot": "D-9"}
            assert first.tools[0].duration_ms == 12.0
            listed = await reader.recent_calls(persona="parcels")
            assert [found.id for found in listed] == [info.call_id]
            assert listed[0].turns == 3
            for hostile in ("' OR 1=1 --", "%", "parcels'; DROP TABLE voxline_calls; --"):
                assert await reader.recent_calls(persona=hostile) == []
                assert await reader.call(hostile) is None
            assert await reader.call("%") is None
            assert len(await reader.recent_calls()) == 1  # nothing was dropped
        finally:
            await reader.close()

    asyncio.run(scenario())


def test_tool_arguments_and_caller_numbers_can_be_kept_out(tmp_path: Path):
    async def scenario() -> None:
        store = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        await store.open()
        settings = RecordsConfig(keep_tool_arguments=False, keep_caller_numbers=False)
        writer = RecordWriter(store, settings)
        info = a_call()
        async with attached(writer, CallEvents()):
            record(writer, info, turns=1)
        reader = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        call = await reader.call(info.call_id)
        await reader.close()
        assert call is not None
        assert call.caller is None and call.called is None
        tool = call.turn_records[0].tools[0]
        assert (tool.name, tool.arguments, tool.result, tool.duration_ms) == (
            "track_parcel",
            None,
            None,
            12.0,
        )
        raw = b"".join(path.read_bytes() for path in tmp_path.glob("records.sqlite3*"))
        assert b"Z-1" not in raw and b"7654321" not in raw

    asyncio.run(scenario())


def test_a_full_disk_is_logged_and_counted_and_the_records_wait(tmp_path: Path):
    """SQLite's page limit gives the real 'database or disk is full' error."""

    async def scenario() -> None:
        store = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        await store.open()
        limit = {"pages": 1}

        @event.listens_for(store.engine.sync_engine, "connect")
        def _limit(connection, _record) -> None:
            connection.execute(f"PRAGMA max_page_count = {limit['pages']}")

        await store.engine.dispose()  # new connections take the limit
        writer = RecordWriter(store, RecordsConfig())
        info = a_call()
        async with attached(writer, CallEvents()):
            writer.call_started(info)
            for index in range(1, 4):  # returns at once: nothing waits for the disk
                turn = a_turn(index)
                turn.caller_text = "a long question " * 500  # new pages: past the limit
                writer.turn_finished(info, turn)
            writer.call_ended(info, "caller hung up", a_turn(4, complete=False))

            async def failing() -> None:
                while writer.write_errors == 0:
                    await asyncio.sleep(0.01)  # polling the counter, under a deadline

            await asyncio.wait_for(failing(), 10)
            assert writer.waiting > 0 and not writer.database_up
            limit["pages"] = 100_000
            await store.engine.dispose()
            await written(writer)
        assert writer.dropped == 0 and writer.database_up
        reader = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        call = await reader.call(info.call_id)
        await reader.close()
        assert call is not None and len(call.turn_records) == 4

    asyncio.run(scenario())


def test_records_beyond_max_waiting_are_dropped_and_counted(tmp_path: Path):
    async def scenario() -> None:
        store = RecordStore(f"sqlite:///{tmp_path}/records.sqlite3")
        await store.open()
        writer = RecordWriter(store, RecordsConfig(max_waiting=10))  # not started: all wait
        record(writer, a_call(), turns=10)
        assert writer.waiting == 10 and writer.dropped == 14
        await store.close()

    asyncio.run(scenario())


def test_an_unreachable_database_stops_start_unless_records_are_optional(tmp_path: Path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    url = f"sqlite:///{blocked}/records.sqlite3"

    async def scenario() -> None:
        with pytest.raises(RecordsUnavailableError, match="cannot create"):
            await open_writer(ServerConfig(records_url=url))
        optional = ServerConfig(records_url=url, records=RecordsConfig(optional=True))
        writer = await open_writer(optional)
        assert writer is not None and not writer.database_up
        await writer.close()
        assert await open_writer(ServerConfig(records=RecordsConfig(enabled=False))) is None

    asyncio.run(scenario())


def calls(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VOXLINE, "calls", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_calls_command_bad_input(tmp_path: Path, voxline_env: dict[str, str]):
    env = {**voxline_env, "XDG_DATA_HOME": str(tmp_path / "data")}
    empty = calls("list", "--json", env=env)
    assert (empty.returncode, json.loads(empty.stdout)) == (0, [])

    async def one_call() -> str:
        store = RecordStore(f"sqlite:///{tmp_path}/data/voxline/records.sqlite3")
        await store.open()
        writer = RecordWriter(store, RecordsConfig())
        info = a_call()
        async with attached(writer, CallEvents()):
            record(writer, info, turns=1)
        return info.call_id

    call_id = asyncio.run(one_call())
    shown = calls("show", call_id[:10], env=env)
    assert shown.returncode == 0, shown.stderr
    assert "caller: question 1" in shown.stdout and "track_parcel" in shown.stdout
    assert "unfinished" in shown.stdout and "caller hung up" in shown.stdout
    for bad in ("1; DROP TABLE voxline_calls", "x" * 65, "' OR '1'='1"):
        result = calls("show", bad, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "is not a call id" in result.stderr
    missing = calls("show", "CA" + "0" * 32, env=env)
    assert missing.returncode == 1 and "no call" in missing.stderr
    since = calls("list", "--since", "last tuesday", env=env)
    assert since.returncode == 2 and "--since" in since.stderr
    hostile = calls("list", "--persona", "' OR 1=1 --", "--json", env=env)
    assert (hostile.returncode, json.loads(hostile.stdout)) == (0, [])
    recent = calls("list", "--since", "1h", "--json", env=env)
    assert [row["id"] for row in json.loads(recent.stdout)] == [call_id]
    config = tmp_path / "voxline.yaml"
    config.write_text("records_url: mysql://db/records\n")
    wrong = calls("list", "--config", str(config), env=env)
    assert wrong.returncode == 2 and "records_url" in wrong.stderr


def test_calls_older_than_retention_days_are_deleted_at_start(tmp_path: Path):
    async def scenario() -> None:
        url = f"sqlite:///{tmp_path}/records.sqlite3"
        store = RecordStore(url)
        await store.open()
        old, recent = a_call(), a_call()
        old.started_at = datetime.now(UTC) - timedelta(days=40)
        writer = RecordWriter(store, RecordsConfig(retention_days=None))
        async with attached(writer, CallEvents()):
            record(writer, old, turns=1)
            record(writer, recent, turns=1)
        store = RecordStore(url)
        await store.open()
        kept = RecordWriter(store, RecordsConfig(retention_days=30))
        async with attached(kept, CallEvents()):

            async def purged() -> None:
                while await store.call(old.call_id) is not None:
                    await asyncio.sleep(0.05)  # polling the database, under a deadline

            await asyncio.wait_for(purged(), 10)
            assert await store.call(recent.call_id) is not None

    asyncio.run(scenario())


def test_processes_starting_together_on_one_database_all_open_it(tmp_path):
    # Each process finds the tables missing and creates them; the ones that lose the
    # race must not fail their start ("table voxline_calls already exists").
    script = (
        "import asyncio, sys\n"
        "from voxline.records.store import RecordStore\n"
        "async def main():\n"
        "    store = RecordStore(sys.argv[1])\n"
        "    await store.open()\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    url = f"sqlite:///{tmp_path}/records.sqlite3"
    starts = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for start in starts:
        _, err = start.communicate(timeout=60)
        assert start.returncode == 0, err.decode()[-2000:]
