"""A launched model server that dies is restarted, with backoff, on the same address.

The server here is a real process: a small OpenAI-style ``/v1/models`` server in
plain Python, launched and supervised like llama.cpp's and vLLM's (the end-to-end
test with the real llama.cpp server under ``voxline serve`` is in
test_serve_supervision.py). It refuses to start while a marker file exists, as a
server whose GPU or port is not free yet would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from voxline.engines.llm import check_endpoint, free_port
from voxline.engines.server_process import LLMServerError, SupervisedServer

SCRIPT = """
import http.server, json, os, sys
port, marker = int(sys.argv[1]), sys.argv[2]
if os.path.exists(marker):
    print("cannot start: " + marker, flush=True)
    sys.exit(3)

class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "tiny"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Models)
print("Uvicorn running on port", port, flush=True)
server.serve_forever()
"""


class TinyServer(SupervisedServer):
    def __init__(self, marker: Path):
        super().__init__(
            name="tiny server", host="127.0.0.1", port=free_port(), model_alias="tiny",
            startup_timeout=30,
        )  # fmt: skip
        self.marker = marker
        self.restart_backoff_secs = (0.2, 0.4)
        self.restarted = asyncio.Event()

        async def on_restart() -> None:
            self.restarted.set()

        self.on_restart = on_restart

    def command(self) -> list[str]:
        return [sys.executable, "-c", SCRIPT, str(self.port), str(self.marker)]


async def test_a_server_that_dies_is_restarted_until_it_answers(tmp_path):
    marker = tmp_path / "not-yet"
    server = TinyServer(marker)
    await server.start()
    try:
        first = server.pid
        assert first is not None and server.up
        marker.touch()  # the next starts fail until the marker is gone
        os.kill(first, signal.SIGKILL)
        with pytest.raises(TimeoutError):
            # Restart attempts fail while the marker exists: still down after a few.
            await asyncio.wait_for(server.restarted.wait(), 1.5)
        assert not server.up and server.restarts == 0
        with pytest.raises(LLMServerError):
            await check_endpoint(server.endpoint, timeout=2)
        marker.unlink()
        await asyncio.wait_for(server.restarted.wait(), 10)
        assert server.up and server.restarts == 1
        assert server.pid not in (None, first)
        await check_endpoint(server.endpoint, timeout=5)  # same address as before
    finally:
        await server.stop()
    assert server.pid is None and not server.up


async def test_a_stopped_server_is_not_restarted(tmp_path):
    server = TinyServer(tmp_path / "marker")
    await server.start()
    pid = server.pid
    assert pid is not None
    await server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.restarted.wait(), 1.0)
    assert server.pid is None and server.restarts == 0


def autogroup(pid: int) -> str | None:
    """The scheduler's autogroup of a process ("/autogroup-12 nice 0"), where Linux has it.

    None without autogroups, and also for a process in a CPU cgroup of its own (a container,
    a systemd service with CPU accounting): Linux applies autogroups only in the root CPU
    cgroup and prints nothing for the others.
    """
    try:
        fields = Path(f"/proc/{pid}/autogroup").read_text().split()
    except OSError:
        return None
    return fields[0] if fields else None


@pytest.mark.parametrize("own_session", [False, True])
async def test_a_server_runs_in_a_group_of_its_own_and_in_voxlines_session(tmp_path, own_session):
    server = TinyServer(tmp_path / "marker")
    server.own_session = own_session
    await server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert os.getpgid(pid) == pid  # stop() ends the group: everything it started
        if own_session:  # as the bench starts stock pipecat's server
            assert os.getsid(pid) == pid
        else:  # the scheduler weighs its threads with voxline's (docs/cpu.md)
            assert os.getsid(pid) == os.getsid(0)
            assert autogroup(pid) == autogroup(os.getpid())
    finally:
        await server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
