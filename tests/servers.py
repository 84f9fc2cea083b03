"""Start and stop real servers for tests and benchmarks: voxline serve, the Twilio REST
stand-in, a throwaway PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from voxline.engines.llm import free_port


class ServerProcess:
    """A subprocess whose output is collected line by line; stopped by its process id."""

    def __init__(self, command: list[str], *, env: dict[str, str], ready_marker: str):
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._marker = ready_marker
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._marker in line:
                self._ready.set()
        self._ready.set()  # exited: wake the waiter

    def wait_ready(self, timeout: float) -> None:
        """Block until the ready marker is printed; fail with the output if it never is."""
        if not self._ready.wait(timeout) or self.process.poll() is not None:
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-40:]))

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return "\n".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the process group, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode


def start_rest_standin(log_path: Path) -> tuple[ServerProcess, str]:
    """The Twilio REST stand-in on a free port; returns it and its base URL."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "tests.twilio_rest_standin", str(port), str(log_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        ready_marker="ready",
    )
    server.wait_ready(30)
    return server, f"http://127.0.0.1:{port}"


def start_voxline(
    config: Path,
    env: dict[str, str],
    port: int,
    *,
    wait: bool = True,
    launcher: list[str] | None = None,
) -> ServerProcess:
    """``voxline serve`` with ``config`` on ``port``, once every persona is ready
    (``wait=False``: at once; call ``wait_ready(240)``, e.g. after starting others).
    ``launcher`` runs instead of the ``voxline`` script, with the same arguments (a
    benchmark's variant of the server)."""
    voxline = launcher or [str(Path(sys.executable).parent / "voxline")]
    server = ServerProcess(
        [*voxline, "serve", "--config", str(config), "--port", str(port)],
        # Call records without a records_url: a file beside the config, not in $HOME.
        env={"XDG_DATA_HOME": str(config.parent / "data"), **env},
        ready_marker="voxline ready",
    )
    if wait:
        server.wait_ready(240)
    return server


def serve_voxline(
    tmp: Path,
    *,
    numbers: dict[str, Path],
    default_persona: Path,
    token: str,
    max_calls: int,
    engines: dict[str, Any] | None = None,
    log_level: str | None = None,
    records_url: str | None = None,
    records: dict[str, Any] | None = None,
    twilio: dict[str, Any] | None = None,
    wait: bool = True,
    launcher: list[str] | None = None,
) -> tuple[ServerProcess, str]:
    """``voxline serve`` on a free loopback port with a ``voxline.yaml`` written here.

    ``log_level`` INFO makes it log a ``turn {json}`` line per turn. ``records_url`` and
    ``records`` are the config's call-records keys (docs/records.md; without a URL the
    records go to a SQLite file under ``tmp``); ``twilio`` is its ``twilio:`` section.
    ``wait=False`` returns at once: call ``wait_ready(240)``. ``launcher``: see
    :func:`start_voxline`. Returns the server (its output is collected) and its base URL.
    """
    port = free_port()
    config: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "default_persona": str(default_persona),
        "max_calls": max_calls,
        "numbers": {number: str(path) for number, path in numbers.items()},
    }
    if engines:
        config["engines"] = engines
    if records_url is not None:
        config["records_url"] = records_url
    if records is not None:
        config["records"] = records
    if twilio is not None:
        config["twilio"] = twilio
    path = tmp / "voxline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "TWILIO_AUTH_TOKEN": token, "VOXLINE_OFFLINE": "1"}
    if log_level:
        env["VOXLINE_LOG_LEVEL"] = log_level
    return start_voxline(path, env, port, wait=wait, launcher=launcher), f"http://127.0.0.1:{port}"


class PostgresToolError(subprocess.CalledProcessError):
    """A PostgreSQL tool failed; its message ends with what the tool printed on stderr."""

    def __str__(self) -> str:
        said = (self.stderr or b"").decode(errors="replace").strip()
        return f"{super().__str__()}: {said}" if said else super().__str__()


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1, run by pg_ctl (as ``postgres`` if root).

    Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``, the newest), in a
    temporary folder, listening on loopback only, without fsync; ``url`` connects as the
    ``voxline`` superuser (trust authentication) to the ``postgres`` database.
    PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` user.
    """

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
        if not found:
            raise RuntimeError("PostgreSQL is not installed: scripts/install.sh --test installs it")
        self.bin = Path(found[-1]).parent
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="voxline-pg-"))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://voxline@127.0.0.1:{self.port}/postgres"
        try:
            self._run("initdb", "-D", str(self.data), "-U", "voxline", "--auth=trust", "-E", "UTF8")
        except (OSError, subprocess.SubprocessError):
            shutil.rmtree(self.dir, ignore_errors=True)  # nothing runs in it yet
            raise

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            user=self.user,
            cwd=self.dir,
            timeout=120,
        )
        if done.returncode != 0:
            raise PostgresToolError(done.returncode, done.args, done.stdout, done.stderr)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl -m mode``) and wait until it has."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster's folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _version(path: str) -> float:
    match = re.search(r"postgresql/(\d+(?:\.\d+)?)/", path)
    return float(match.group(1)) if match else 0.0
