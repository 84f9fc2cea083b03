"""Two ``voxline serve`` processes behind nginx, as one phone service.

Debian's nginx runs in the foreground with a config this test writes (loopback
only), balancing round-robin over two processes that share
``VOXLINE_STREAM_SECRET``, each with ``max_calls: 2``, ``twilio.busy_status: 503``
and nginx trusted for ``X-Forwarded-Proto``/``X-Forwarded-Host`` (the Twilio
signature is made for nginx's URL). nginx tries the other process when one
answers 503 (full or draining), for the webhook and for the media stream's
handshake, and answers busy TwiML itself when both are busy. The callers speak
the Twilio protocol to nginx only:

* one call while both are idle: round-robin sends its stream to the process that
  did not answer its webhook, which takes it (the shared key);
* five calls at once: four are answered, two by each process, the fifth hears
  busy from nginx after both processes refused it; every stream reaches a
  process that takes it, whichever process answered its webhook;
* SIGTERM on one process: its two calls go on to their end (no goodbye, no
  hang-up), two new calls all land on the other process, the drained process
  exits 0, and no call was dropped.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import ServerProcess, start_rest_standin, start_voxline
from voxline.engines.llm import free_port
from voxline.transports.caller_frames import RATE
from voxline.transports.dial_result import DialError, DialResult
from voxline.transports.twilio_caller import TwilioCaller

pytestmark = pytest.mark.slow

AUTH_TOKEN = "test-auth-token-0123456789"
STREAM_SECRET = "9c2f" * 16
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin: not on every PATH
BUSY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'


def nginx_config(tmp: Path, port: int, upstreams: list[int]) -> str:
    """A loopback balancer for voxline: websocket upgrade, long timeouts, retry on 503."""
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    servers = "\n".join(f"server 127.0.0.1:{p} max_fails=0;" for p in upstreams)
    return textwrap.dedent(
        f"""\
        {user}
        worker_processes 1;
        pid {tmp}/nginx.pid;
        error_log {tmp}/error.log info;
        events {{ worker_connections 256; }}
        http {{
            log_format upstream '$request_method $uri $status upstream=$upstream_addr '
                                'statuses=$upstream_status';
            access_log {tmp}/access.log upstream;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            fastcgi_temp_path {tmp}/fastcgi;
            uwsgi_temp_path {tmp}/uwsgi;
            scgi_temp_path {tmp}/scgi;
            map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
            upstream voxline {{
                {servers}
            }}
            server {{
                listen 127.0.0.1:{port};
                proxy_http_version 1.1;
                proxy_set_header Upgrade $http_upgrade;
                proxy_set_header Connection $connection_upgrade;
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                proxy_set_header X-Forwarded-Proto $scheme;
                proxy_set_header X-Forwarded-Host $http_host;
                proxy_read_timeout 3600s;
                proxy_send_timeout 3600s;
                proxy_next_upstream error timeout http_503 non_idempotent;
                location / {{
                    proxy_pass http://voxline;
                }}
                location = /twilio/voice {{
                    proxy_pass http://voxline;
                    proxy_intercept_errors on;
                    error_page 502 503 504 = @busy;
                }}
                location @busy {{
                    default_type application/xml;
                    return 200 '{BUSY_TWIML}';
                }}
            }}
        }}
        """
    )


def voxline_config(tmp: Path, name: str, rest_url: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            default_persona: desk.yaml
            max_calls: 2
            drain_timeout_secs: 60
            engines:
              llm: {{backend: llama_cpp}}
            http:
              trusted_proxies: ["127.0.0.1"]  # nginx
            twilio:
              rest_base_url: {rest_url}
              busy_status: 503  # nginx tries the other process
              stream_token_ttl_secs: 5
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("scale_out")
    rest_log = tmp / "rest.jsonl"
    rest, rest_url = start_rest_standin(rest_log)
    (tmp / "desk.yaml").write_text(
        textwrap.dedent(
            """\
            name: desk
            prompt: You are the front desk of a small shop. Answer in one short sentence.
            greeting: Hello, front desk.
            limits: {idle_prompt_secs: null}
            """
        )
    )
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_ACCOUNT_SID": "AC" + "3" * 32,
        "VOXLINE_STREAM_SECRET": STREAM_SECRET,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
    }
    ports = [free_port(), free_port()]
    servers = [
        # Each its own data directory (call records), as two machines would have.
        start_voxline(
            voxline_config(tmp, name, rest_url),
            {**env, "XDG_DATA_HOME": str(tmp / f"{name}-data")},
            port,
            wait=False,
        )
        for name, port in zip(("a", "b"), ports, strict=True)
    ]
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, ports))
    nginx = None
    try:
        for server in servers:  # both load at once
            server.wait_ready(240)
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"),
             "-g", "daemon off;"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        wait_for_port(port, nginx)
        yield {
            "url": f"http://127.0.0.1:{port}",
            "servers": servers,
            "direct": [f"http://127.0.0.1:{p}" for p in ports],
            "rest_log": rest_log,
            "access_log": tmp / "access.log",
        }
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)  # graceful: its pid, not a name
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        codes = [server.stop() for server in servers]
        rest.stop()
    assert codes == [0, 0], [server.output[-2000:] for server in servers]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.stdout.read() if process.stdout else ''}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("nginx did not listen")


class Line:
    """One caller on the line: it hears the greeting, then stays until released."""

    def __init__(self, url: str):
        self.dialer = TwilioCaller(url, auth_token=AUTH_TOKEN)
        self.greeted = asyncio.Event()
        self.release = asyncio.Event()
        self.task: asyncio.Task[DialResult] | None = None

    @property
    def sid(self) -> str:
        return self.dialer.call_sid

    async def _gate(self) -> None:
        self.greeted.set()
        await self.release.wait()

    def start(self) -> None:
        silent = np.zeros(0, dtype=np.float32)
        self.task = asyncio.create_task(
            self.dialer.call(silent, RATE, gate=self._gate, hang_up_after_quiet=0.5, timeout=180)
        )

    async def wait_greeted(self, timeout: float = 60) -> None:
        assert self.task is not None
        greeted = asyncio.create_task(self.greeted.wait())
        await asyncio.wait({greeted, self.task}, timeout=timeout, return_when="FIRST_COMPLETED")
        greeted.cancel()
        if self.task.done():
            self.task.result()  # raises the reason the call failed (DialError...)
        assert self.greeted.is_set(), f"call {self.sid} heard no greeting"


def where(servers: list[ServerProcess], needle: str) -> list[int]:
    """The indexes of the servers whose log holds ``needle``."""
    return [i for i, server in enumerate(servers) if needle in server.output]


def answered_by(servers: list[ServerProcess], sid: str) -> list[int]:
    return where(servers, f"call {sid} from ")


def streamed_on(servers: list[ServerProcess], sid: str) -> list[int]:
    return where(servers, f"call {sid}: stream ")


def completed(result: DialResult) -> bool:
    """The caller heard the greeting and hung up itself (the server did not drop it)."""
    return result.marks_echoed >= 1 and result.sent[-1] == "stop"


async def readiness(url: str) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url + "/health/ready")
        return response.status_code, response.json()


async def wait_idle(urls: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while (await readiness(url))[1]["calls"]:
            assert time.monotonic() < deadline, f"{url} still has calls"
            await asyncio.sleep(0.2)


def test_a_stream_is_taken_by_the_process_that_did_not_answer_its_webhook(cluster):
    servers = cluster["servers"]

    async def one_call() -> tuple[str, DialResult]:
        line = Line(cluster["url"])
        line.start()
        await line.wait_greeted()
        line.release.set()
        assert line.task is not None
        return line.sid, await line.task

    sid, result = asyncio.run(one_call())
    assert completed(result), result.received[-10:]
    [answered], [streamed] = answered_by(servers, sid), streamed_on(servers, sid)
    # nginx's round-robin sends the stream to the other process, which accepts its token.
    assert answered != streamed, (answered, streamed)
    # The reservation the webhook made lapses (stream_token_ttl_secs: 5).
    asyncio.run(wait_idle(cluster["direct"]))


def test_calls_beyond_one_process_land_on_both_and_a_drained_process_drops_none(cluster):
    servers, direct = cluster["servers"], cluster["direct"]
    url = cluster["url"]
    asyncio.run(wait_idle(direct))

    async def scenario() -> dict:
        first = [Line(url) for _ in range(5)]
        for line in first:
            line.start()
        busy: list[Line] = []
        live: list[Line] = []
        for line in first:
            try:
                await line.wait_greeted()
                live.append(line)
            except DialError as exc:
                assert 'Reject reason="busy"' in str(exc), exc
                busy.append(line)
        states = [await readiness(u) for u in direct]

        # Drain the process that answers the first of the live calls.
        [drained] = streamed_on(servers, live[0].sid)
        other = 1 - drained
        os.kill(servers[drained].process.pid, signal.SIGTERM)
        draining = await readiness(direct[drained])
        # The other process's calls end; new calls all go to it.
        for line in live:
            if streamed_on(servers, line.sid) == [other]:
                line.release.set()
        for line in live:
            if streamed_on(servers, line.sid) == [other]:
                assert line.task is not None
                await line.task
        await wait_idle([direct[other]])
        later = [Line(url) for _ in range(2)]
        for line in later:
            line.start()
        for line in later:
            await line.wait_greeted()
        # The drained process's calls were never interrupted; they end now.
        for line in [*live, *later]:
            line.release.set()
        results = {line.sid: await line.task for line in [*live, *later] if line.task}
        code = await asyncio.to_thread(servers[drained].process.wait, 60)
        return {
            "busy": busy, "live": live, "later": later, "states": states,
            "drained": drained, "draining": draining, "results": results, "code": code,
        }  # fmt: skip

    outcome = asyncio.run(scenario())
    drained, live, later = outcome["drained"], outcome["live"], outcome["later"]
    logs = [server.output for server in servers]

    # Four calls, two on each process; the fifth heard busy after both refused it.
    assert len(live) == 4 and len(outcome["busy"]) == 1
    assert sorted(streamed_on(servers, line.sid)[0] for line in live) == [0, 0, 1, 1]
    assert all(code == 503 for code, _ in outcome["states"]), outcome["states"]
    assert all("full: 2 of 2 calls" in body["problems"] for _, body in outcome["states"])
    [refused] = outcome["busy"]
    assert answered_by(servers, refused.sid) == [] and streamed_on(servers, refused.sid) == []
    assert all("voice webhook refused (503): busy: 2 of 2" in log for log in logs)

    # Draining: readiness 503 at once; the later calls all landed on the other process,
    # their streams too, even when nginx tried the draining process first.
    code, body = outcome["draining"]
    assert code == 503 and "draining: no new calls" in body["problems"], body
    for line in later:
        assert answered_by(servers, line.sid) == [1 - drained], line.sid
        assert streamed_on(servers, line.sid) == [1 - drained], line.sid

    # No call was dropped: each heard its greeting and hung up itself; the drained
    # process said no goodbye, sent no hang-up, and exited 0 after its last call.
    assert all(completed(result) for result in outcome["results"].values()), outcome["results"]
    assert "saying goodbye" not in logs[drained]
    assert not cluster["rest_log"].exists() or not cluster["rest_log"].read_text()
    assert outcome["code"] == 0, logs[drained][-3000:]
    assert re.search(r"drained: every call has ended", logs[drained])
