"""Tool handlers that hang, raise, answer with something that is not JSON, or answer
10 MB: each becomes a bounded error result the LLM speaks from, never a crash, a
traceback in the log, or a wait without end.

Handlers are real Python files loaded from a spec, run in real threads; HTTP tools
call a real server on loopback. Each input is also a row of the bad-input corpus
table (tests/corpus).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from loguru import logger

from tests.corpus import record
from voxline.engines.llm import free_port
from voxline.tools.runner import MAX_RESULT_CHARS, ToolRunner
from voxline.tools.spec import load_tool_spec, resolve_python_handler
from voxline.tools.threads import ToolThreads, tool_threads

HANDLERS = """
import math
import sys
import threading

RELEASE = threading.Event()

def hang() -> str:
    RELEASE.wait(60)
    return "late"

def add(a: int, b: int) -> dict:
    return {"sum": a + b}

def raises() -> dict:
    raise KeyError("account 12345 of caller +15550001111")

def exits() -> dict:
    sys.exit(3)

async def raises_async() -> dict:
    raise ConnectionResetError("ledger went away")

def a_set() -> object:
    return {1, 2, 3}

def an_object() -> object:
    return object()

def not_a_number() -> dict:
    return {"balance": math.nan}

def circular() -> dict:
    loop = {}
    loop["self"] = loop
    return loop

def deep() -> list:
    value = []
    for _ in range(100_000):
        value = [value]
    return value

def ten_megabytes() -> str:
    return "x" * (10 * 2**20)

def ten_megabytes_of_rows() -> list:
    return [{"id": index, "name": "row"} for index in range(400_000)]
"""

CATEGORY = "tool handler"


@pytest.fixture
def tools_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    yield tmp_path
    # Let every hung handler return, so no thread outlives the test.
    resolve_python_handler("handlers:hang", tmp_path).__globals__["RELEASE"].set()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def runner(
    tools_dir: Path,
    function: str,
    *,
    name: str | None = None,
    parameters: str = "{type: object, properties: {}}",
    timeout: float = 2,
    threads: ToolThreads | None = None,
) -> ToolRunner:
    name = name or function
    path = tools_dir / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            description: test tool
            parameters: {parameters}
            python: handlers:{function}
            timeout_secs: {timeout}
            """
        )
    )
    return ToolRunner(load_tool_spec(path), tools_dir, threads=threads)


NUMBERS = "{type: object, properties: {a: {type: integer}, b: {type: integer}}}"


async def test_a_hung_blocking_tool_cannot_exhaust_the_tool_threads(tools_dir):
    threads = ToolThreads(3, max_hung_per_tool=2)
    hang = runner(tools_dir, "hang", timeout=0.2, threads=threads)
    add = runner(tools_dir, "add", parameters=NUMBERS, threads=threads)

    for _ in range(2):
        assert await hang.run({}) == {"error": "hang did not answer within 0.2 s"}
    assert threads.hung("hang") == 2
    # A third call of the hung tool is refused at once, not queued behind the others.
    third = await asyncio.wait_for(hang.run({}), timeout=0.1)
    assert "2 earlier calls of it are still running past their timeout" in third["error"]
    record(CATEGORY, "blocking handler that hangs, called again", refused=True, detail=str(third))
    # Other tools still run on the thread that is left.
    assert await add.run({"a": 2, "b": 3}) == {"result": {"sum": 5}}

    # A second hung tool takes the last thread: now every call is refused at once.
    other = runner(tools_dir, "hang", name="hang_other", timeout=0.2, threads=threads)
    assert "did not answer within 0.2 s" in (await other.run({}))["error"]
    full = await asyncio.wait_for(add.run({"a": 1, "b": 1}), timeout=0.1)
    assert full == {
        "error": "add failed: all 3 tool threads are busy (3 with calls past their timeout); "
        "try again later"
    }
    record(CATEGORY, "every tool thread hung", refused=True, detail=full["error"])

    # Once the handlers return, their threads serve calls again.
    resolve_python_handler("handlers:hang", tools_dir).__globals__["RELEASE"].set()
    await threads.drain()
    assert threads.busy == 0 and threads.hung("hang") == 0
    assert await add.run({"a": 20, "b": 22}) == {"result": {"sum": 42}}


async def test_hung_tools_leave_the_event_loops_own_threads_alone(tools_dir):
    # Blocking work of the engines and of pipecat runs in the loop's default executor:
    # tools that never return must not take its threads.
    hang = runner(tools_dir, "hang", timeout=0.1)
    results = [await hang.run({}) for _ in range(12)]
    assert sum("did not answer" in result["error"] for result in results) == 2, results
    assert await asyncio.wait_for(asyncio.to_thread(sum, [1, 2]), timeout=5) == 3
    assert tool_threads().hung("hang") == 2


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("raises", "raises failed: KeyError: 'account 12345 of caller +15550001111'"),
        ("exits", "exits failed: SystemExit: 3"),
        ("raises_async", "raises_async failed: ConnectionResetError: ledger went away"),
        ("a_set", "a_set returned a value that is not JSON: a set is not JSON"),
        ("an_object", "an_object returned a value that is not JSON: a object is not JSON"),
        ("not_a_number", "not_a_number returned a value that is not JSON: Out of range float"),
        ("circular", "circular returned a value that is not JSON: Circular reference"),
        ("deep", "deep returned a value that is not JSON: maximum recursion depth"),
        ("ten_megabytes", f"ten_megabytes returned 10485762 characters; the limit is "
                          f"{MAX_RESULT_CHARS}"),
        ("ten_megabytes_of_rows", "ten_megabytes_of_rows returned"),
    ],
)  # fmt: skip
async def test_a_handler_that_fails_becomes_one_error_result_and_one_log_line(
    tools_dir, log_lines, function, expected
):
    result = await runner(tools_dir, function).run({})
    clean = set(result) == {"error"} and expected in result["error"]
    traceback = any("Traceback" in line for line in log_lines)
    record(CATEGORY, function, refused=clean and not traceback, crashed=traceback,
           detail=result.get("error", str(result))[:120])  # fmt: skip
    assert set(result) == {"error"} and expected in result["error"], result
    assert len(result["error"]) < 400
    assert not traceback, log_lines
    # The log names the tool and where it raised, never what the exception says
    # (it may carry the caller's data).
    assert not any("+15550001111" in line for line in log_lines), log_lines


class HostileAPI:
    """An HTTP tool's endpoint that answers 10 MB, or not JSON, or fails."""

    async def huge(self, _request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request=_request)
        await response.write(b'{"rows": "')
        for _ in range(10):
            await response.write(b"x" * 2**20)
        await response.write(b'"}')
        return response

    async def text(self, _request: web.Request) -> web.Response:
        return web.Response(text="\x00\x01 not json at all", content_type="text/plain")

    async def fail(self, _request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")


@pytest.fixture
async def hostile_api() -> Iterator[str]:
    api = HostileAPI()
    app = web.Application()
    app.router.add_post("/huge", api.huge)
    app.router.add_post("/text", api.text)
    app.router.add_post("/fail", api.fail)
    app_runner = web.AppRunner(app)
    await app_runner.setup()
    port = free_port()
    await web.TCPSite(app_runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await app_runner.cleanup()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/huge", "POST ${TOOL_API}/huge?key=${TOOL_KEY} answered more than 1048576 bytes"),
        ("/text", "answered text/plain; charset=utf-8, not JSON"),
        ("/fail", "answered HTTP 502: bad gateway"),
        ("/closed", "POST ${TOOL_API}/closed?key=${TOOL_KEY}: ConnectError"),
    ],
)
async def test_an_http_tool_that_answers_badly_is_a_bounded_error_without_its_secret(
    tmp_path, hostile_api, monkeypatch, log_lines, path, expected
):
    monkeypatch.setenv("TOOL_API", "http://127.0.0.1:9" if path == "/closed" else hostile_api)
    monkeypatch.setenv("TOOL_KEY", "sk-live-0123456789")
    spec = tmp_path / "lookup.yaml"
    spec.write_text(
        "name: lookup\ndescription: test tool\n"
        'http: {url: "${TOOL_API}' + path + '?key=${TOOL_KEY}", method: POST}\n'
    )
    result = await ToolRunner(load_tool_spec(spec), tmp_path).run({})
    leaked = any("sk-live" in text for text in [str(result), *log_lines])
    record("http tool", path.strip("/"), refused=expected in result.get("error", "") and not leaked,
           crashed=leaked, detail=result.get("error", "")[:120])  # fmt: skip
    assert set(result) == {"error"} and expected in result["error"], result
    assert not leaked, (result, log_lines)


EXIT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from voxline.tools.runner import ToolRunner
from voxline.tools.spec import load_tool_spec

async def main():
    tools = Path(sys.argv[1])
    result = await ToolRunner(load_tool_spec(tools / "hang.yaml"), tools).run({})
    print(result["error"], flush=True)

asyncio.run(main())
"""


def test_a_hung_tool_does_not_keep_the_process_from_exiting(tools_dir):
    # asyncio.run() and the interpreter's exit both wait for executor threads: a
    # handler that never returns would keep a stopping server alive.
    runner(tools_dir, "hang", timeout=0.2)
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(tools_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "hang did not answer within 0.2 s" in done.stdout
