"""Call records in a real PostgreSQL server, started by the test on loopback.

The cluster is :class:`tests.servers.PostgresCluster`: Debian's ``postgresql`` package
(``/usr/lib/postgresql/*/bin``), in a temporary folder, listening on 127.0.0.1 only,
stopped by the test. PostgreSQL refuses to run as root: as root the cluster runs as the
``postgres`` user.

* A call's records reach PostgreSQL; the database stops in the middle of the call and
  starts again: the call goes on, ``/metrics`` counts the records waiting, and once
  the database is back every record is written, none dropped.
* A ``records_url`` nobody answers stops ``serve`` with one line and exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_log_content import HANDLER, PERSONA, QUESTION, TOOL
from test_records_calls import FOLLOW_UP, THIRD, check_answered, speech

from tests.conftest import VOXLINE
from tests.servers import PostgresCluster, ServerProcess, start_voxline
from tests.speech import caller_voice
from voxline.engines.llm import free_port
from voxline.records.models import CallRecord
from voxline.records.store import RecordStore
from voxline.transports.twilio_caller import TwilioCaller

pytestmark = pytest.mark.slow

AUTH_TOKEN = "test-auth-token-0123456789"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.remove()


def write_persona(tmp: Path) -> None:
    """The parcel desk persona of test_log_content, whose LLM must call a Python tool."""
    (tmp / "tools").mkdir()
    (tmp / "tools" / "track_parcel.yaml").write_text(TOOL)
    (tmp / "tools" / "parcels.py").write_text(HANDLER)
    (tmp / "parcels.yaml").write_text(PERSONA)


def write_config(tmp: Path, port: int, records_url: str) -> Path:
    config = tmp / "voxline.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:{port}\ndefault_persona: parcels.yaml\n"
        f"records_url: {records_url}\nengines: {{llm: {{backend: llama_cpp}}}}\n"
    )
    return config


def environment(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
        "PARCEL_LOG": str(tmp / "parcel.log"),
    }


def test_a_records_url_nobody_answers_stops_serve_with_one_line(tmp_path: Path):
    write_persona(tmp_path)
    nobody = f"postgresql://voxline:s3cret@127.0.0.1:{free_port()}/postgres"
    config = write_config(tmp_path, free_port(), nobody)
    result = subprocess.run(
        [VOXLINE, "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        timeout=120,
    )
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and errors[0].startswith("voxline: error: records database"), errors
    assert "s3cret" not in result.stderr and "records.optional" in errors[0]
    assert "Traceback" not in result.stderr


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def record_of(url: str, call_sid: str, ready, timeout: float) -> CallRecord:
    store = RecordStore(url)
    try:

        async def poll() -> CallRecord:
            while True:
                with contextlib.suppress(Exception):  # the database may be down meanwhile
                    record = await store.call(call_sid)
                    if record is not None and ready(record):
                        return record
                await asyncio.sleep(0.3)  # polling the database, under a deadline

        return await asyncio.wait_for(poll(), timeout)
    finally:
        await store.close()


def test_records_wait_while_postgres_is_down_and_none_is_lost(postgres, tmp_path: Path):
    write_persona(tmp_path)
    port = free_port()
    config = write_config(tmp_path, port, postgres.url)
    server: ServerProcess = start_voxline(config, environment(tmp_path), port)
    url = f"http://127.0.0.1:{port}"
    voice = caller_voice()
    dialer = TwilioCaller(url, auth_token=AUTH_TOKEN)
    seen_waiting = []
    try:

        async def scenario() -> CallRecord:
            call = asyncio.create_task(
                dialer.call(
                    speech(QUESTION),
                    voice.sample_rate,
                    then=[(speech(FOLLOW_UP), 0.8), (speech(THIRD), 0.8)],
                    timeout=180,
                )
            )
            try:
                await record_of(postgres.url, dialer.call_sid, lambda r: r.turn_records, 120)
                await asyncio.to_thread(postgres.stop, "immediate")  # mid-call

                async def waiting() -> None:
                    while not seen_waiting:
                        count = await asyncio.to_thread(metric, url, "voxline_records_waiting")
                        if count > 0:
                            seen_waiting.append(count)
                        await asyncio.sleep(0.2)  # polling /metrics, under a deadline

                await asyncio.wait_for(waiting(), 90)
                await asyncio.to_thread(postgres.start)
                result = await call
            finally:
                if not call.done():
                    call.cancel()
                await asyncio.gather(call, return_exceptions=True)
            assert result.turns, "the call went on while the database was down"
            return await record_of(
                postgres.url, dialer.call_sid, lambda r: r.end_reason is not None, 60
            )

        record = asyncio.run(scenario())
        assert seen_waiting and seen_waiting[0] > 0
        assert metric(url, "voxline_records_dropped_total") == 0
        assert metric(url, "voxline_records_write_errors_total") > 0
        assert metric(url, "voxline_records_waiting") == 0
    finally:
        server.stop()
    assert record.transport == "twilio" and record.end_reason
    assert len(record.turn_records) >= 3, record.turn_records
    assert all(turn.finished for turn in record.turn_records)
    check_answered(record.turn_records, QUESTION)
    log = server.output
    assert "records: cannot write to postgresql://voxline@127.0.0.1" in log
    assert "answers again" in log
