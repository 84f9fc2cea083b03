"""YAML tool specs: loading errors name file and field, handlers run with validated
arguments, and every failure becomes an error result instead of an exception."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ROOT, VOXLINE

from voxline.bot.tool_wiring import run_with_filler
from voxline.engines.llm import free_port
from voxline.personas import Persona, load_persona
from voxline.tools.runner import ToolRunner
from voxline.tools.spec import load_tool_spec
from voxline.yamlfile import ConfigError

HANDLERS = """
import asyncio
import time

def add(a: int, b: int) -> dict:
    return {"sum": a + b}

async def slow(seconds: float) -> dict:
    await asyncio.sleep(seconds)
    return {"slept": seconds}

def blocking(seconds: float) -> str:
    time.sleep(seconds)
    return "done"

def broken() -> dict:
    raise RuntimeError("the ledger is offline")

def not_json() -> dict:
    loop = {}
    loop["self"] = loop
    return loop
"""

NUMBERS = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
           "required": ["a", "b"]}  # fmt: skip


def write_spec(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


def runner_for(
    tools_dir: Path, name: str, function: str, *, parameters: str, timeout=2
) -> ToolRunner:
    path = write_spec(
        tools_dir,
        name,
        f"""\
        name: {name}
        description: test tool
        parameters: {parameters}
        python: handlers:{function}
        timeout_secs: {timeout}
        """,
    )
    return ToolRunner(load_tool_spec(path), tools_dir)


SECONDS = "{type: object, properties: {seconds: {type: number}}, required: [seconds]}"
NONE = "{type: object, properties: {}}"


async def test_a_python_handler_runs_with_validated_arguments(tools_dir):
    add = runner_for(tools_dir, "add", "add", parameters=str(NUMBERS).replace("'", '"'))
    assert await add.run({"a": 2, "b": 40}) == {"result": {"sum": 42}}
    assert add.openai_schema()["function"]["parameters"]["required"] == ["a", "b"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"a": 2}, "'b' is a required property"),
        ({"a": "two", "b": 1}, "a: 'two' is not of type 'integer'"),
        ("12345", "arguments must be a JSON object, got str"),
    ],
)
async def test_invalid_arguments_never_reach_the_handler(tools_dir, arguments, expected):
    add = runner_for(tools_dir, "add", "add", parameters=str(NUMBERS).replace("'", '"'))
    result = await add.run(arguments)
    assert set(result) == {"error"} and expected in result["error"], result


async def test_async_and_blocking_handlers_are_bounded_by_the_timeout(tools_dir):
    slow = runner_for(tools_dir, "slow", "slow", parameters=SECONDS, timeout=0.3)
    assert await slow.run({"seconds": 0.01}) == {"result": {"slept": 0.01}}
    assert await slow.run({"seconds": 5}) == {"error": "slow did not answer within 0.3 s"}
    blocking = runner_for(tools_dir, "blocking", "blocking", parameters=SECONDS, timeout=0.3)
    assert await blocking.run({"seconds": 0.01}) == {"result": "done"}
    assert "did not answer within 0.3 s" in (await blocking.run({"seconds": 1}))["error"]


async def test_a_raising_handler_or_a_result_that_is_not_json_is_an_error_result(tools_dir):
    broken = runner_for(tools_dir, "broken", "broken", parameters=NONE)
    assert await broken.run({}) == {"error": "broken failed: RuntimeError: the ledger is offline"}
    weird = runner_for(tools_dir, "weird", "not_json", parameters=NONE)
    assert "returned a value that is not JSON" in (await weird.run({}))["error"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("python: nowhere_module:add", "python: cannot import module 'nowhere_module'"),
        ("python: handlers:missing", "python: module 'handlers' has no function 'missing'"),
        ("python: handlers", "python: String should match pattern"),
        (
            "python: handlers:add\nparameters: {type: object, properties: {a: {type: 7}}}",
            "parameters: not a valid JSON Schema at properties/a/type",
        ),
        ("python: handlers:add\nparameters: {type: array}", "must have `type: object`"),
        ("description: x", "give exactly one handler"),
        ("python: handlers:add\nhttp: {url: 'http://x'}", "give exactly one handler"),
        ("http: {url: 'ftp://x'}", "http.url: String should match pattern"),
        ("python: handlers:add\ncolour: red", "colour"),
    ],
)
def test_spec_errors_name_the_file_and_the_field(tools_dir, body, expected):
    text = (
        "name: bad\ndescription: a tool\n" + body
        if "description" not in body
        else ("name: bad\n" + body)
    )
    path = write_spec(tools_dir, "bad", text)
    with pytest.raises(ConfigError) as caught:
        load_tool_spec(path)
    assert str(path) in str(caught.value) and expected in str(caught.value), str(caught.value)


PERSONA = """\
name: shop
prompt: You sell shoes.
tools_dir: tools
"""


def test_a_persona_finds_its_tool_specs_and_reports_missing_ones(tmp_path, tools_dir):
    persona_dir = tmp_path / "p"
    (persona_dir / "tools").mkdir(parents=True)
    (persona_dir / "tools" / "handlers.py").write_text(HANDLERS)
    write_spec(persona_dir / "tools", "add", f"name: add\ndescription: adds\npython: handlers:add\n"
               f"parameters: {str(NUMBERS).replace(chr(39), chr(34))}\n")  # fmt: skip
    good = persona_dir / "shop.yaml"
    good.write_text(PERSONA + "tools: [add, end_call]\n")
    persona = load_persona(good)
    assert list(persona.tool_specs) == ["add"]

    missing = persona_dir / "missing.yaml"
    missing.write_text(PERSONA + "tools: [add, refund]\n")
    with pytest.raises(ConfigError) as caught:
        load_persona(missing)
    message = str(caught.value)
    assert "tools: " in message and "unknown tool 'refund'" in message
    assert str(persona_dir / "tools" / "refund.yaml") in message

    misnamed = persona_dir / "tools" / "sub.yaml"
    misnamed.write_text("name: subtract\ndescription: x\npython: handlers:add\n")
    wrong = persona_dir / "wrong.yaml"
    wrong.write_text(PERSONA + "tools: [sub]\n")
    with pytest.raises(ConfigError, match="defines a tool named 'subtract'"):
        load_persona(wrong)


def test_voxline_check_validates_personas_and_tools(tmp_path, voxline_env):
    shipped = subprocess.run(
        [VOXLINE, "check", *map(str, sorted((ROOT / "personas").glob("*.yaml"))),
         *map(str, sorted((ROOT / "tools").glob("*.yaml")))],
        capture_output=True, text=True, env=voxline_env, timeout=60,
    )  # fmt: skip
    assert shipped.returncode == 0, shipped.stderr
    assert "tool get_balance -> bank_tools:get_balance" in shipped.stdout

    (tmp_path / "handlers.py").write_text(HANDLERS)
    first = write_spec(tmp_path, "one", "name: add\ndescription: x\npython: handlers:add\n")
    twin = write_spec(tmp_path, "two", "name: add\ndescription: y\npython: handlers:add\n")
    broken = write_spec(tmp_path, "three", "name: three\ndescription: x\npython: gone:f\n")
    result = subprocess.run(
        [VOXLINE, "check", str(first), str(twin), str(broken)],
        capture_output=True, text=True, env=voxline_env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{twin}: name: tool 'add' is also defined in {first}" in result.stderr
    assert f"{broken}: python: cannot import module 'gone'" in result.stderr


async def test_the_filler_line_is_said_only_when_a_tool_is_slow():
    persona = Persona(name="p", prompt="x", filler_after_ms=50)
    said: list[str] = []

    async def speak(text: str) -> None:
        said.append(text)

    async def tool(seconds: float) -> dict:
        await asyncio.sleep(seconds)
        return {"result": seconds}

    assert await run_with_filler(tool(0.0), persona, speak) == {"result": 0.0}
    assert said == []
    assert await run_with_filler(tool(0.2), persona, speak) == {"result": 0.2}
    assert said == ["One moment while I check that."]


async def test_a_quick_tool_whose_reply_is_slow_to_start_still_gets_the_filler():
    # The tool answers at once, but the completion after it waits for a busy LLM server:
    # the caller's silence is as long as with a slow tool.
    persona = Persona(name="p", prompt="x", filler_after_ms=50)
    said: list[str] = []
    background: list[asyncio.Task] = []
    replied = asyncio.Event()

    async def speak(text: str) -> None:
        said.append(text)

    async def quick() -> dict:
        return {"status": "waiting"}

    def later(coroutine) -> None:
        background.append(asyncio.ensure_future(coroutine))

    def waiting() -> bool:
        return not replied.is_set()

    result = await run_with_filler(quick(), persona, speak, still_waiting=waiting, later=later)
    assert result == {"status": "waiting"} and said == []  # the result goes back at once
    await asyncio.gather(*background)
    assert said == ["One moment while I check that."]

    # The reply's first words came before the deadline: no filler after them.
    said.clear()
    background.clear()
    await run_with_filler(quick(), persona, speak, still_waiting=waiting, later=later)
    replied.set()
    await asyncio.gather(*background)
    assert said == []

    # Nor for a slow tool, once something was said (another tool's filler, the caller).
    async def slow() -> dict:
        await asyncio.sleep(0.2)
        return {"status": "waiting"}

    await run_with_filler(slow(), persona, speak, still_waiting=waiting, later=later)
    assert said == [] and len(background) == 1


class BookingAPI:
    """A real HTTP server on loopback standing in for a restaurant's booking system."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        self.app = web.Application()
        self.app.router.add_post("/ok/bookings", self.ok)
        self.app.router.add_post("/fail/bookings", self.fail)
        self.app.router.add_post("/slow/bookings", self.slow)
        self.app.router.add_post("/html/bookings", self.html)
        self.app.router.add_get("/ok/tables", self.tables)

    async def ok(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, dict(request.headers), body))
        return web.json_response({"confirmed": True, "reference": "TS-1042", **body})

    async def tables(self, request: web.Request) -> web.Response:
        return web.json_response({"free": int(request.query["guests"]) <= 4})

    async def fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="database locked")

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({"confirmed": True})

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")


@pytest.fixture
async def booking_api():
    api = BookingAPI()
    runner = web.AppRunner(api.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield api, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def http_runner(tmp_path: Path, path: str, method: str = "POST", timeout: float = 1) -> ToolRunner:
    spec = write_spec(
        tmp_path,
        "book_table",
        f"""\
        name: book_table
        description: books
        parameters: {{type: object, properties: {{guests: {{type: integer}}}}}}
        http:
          url: ${{BOOKING_URL}}{path}
          method: {method}
          headers: {{Authorization: "Bearer ${{BOOKING_KEY}}"}}
        timeout_secs: {timeout}
        """,
    )
    return ToolRunner(load_tool_spec(spec), tmp_path)


async def test_http_tool_success_sends_json_and_secret_headers(tmp_path, booking_api, monkeypatch):
    api, url = booking_api
    monkeypatch.setenv("BOOKING_URL", url)
    monkeypatch.setenv("BOOKING_KEY", "s3cret")
    result = await http_runner(tmp_path, "/ok/bookings").run({"guests": 2})
    assert result == {"result": {"confirmed": True, "reference": "TS-1042", "guests": 2}}
    _path, headers, body = api.requests[-1]
    assert headers["Authorization"] == "Bearer s3cret" and body == {"guests": 2}
    query = await http_runner(tmp_path, "/ok/tables", method="GET").run({"guests": 6})
    assert query == {"result": {"free": False}}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/fail/bookings", "answered HTTP 500: database locked"),
        ("/html/bookings", "answered text/html; charset=utf-8, not JSON: '<html>maintenance"),
        ("/slow/bookings", "book_table did not answer within 1 s"),
        ("/missing/bookings", "answered HTTP 404"),
    ],
)
async def test_http_tool_failures_are_error_results(
    tmp_path, booking_api, monkeypatch, path, expected
):
    _api, url = booking_api
    monkeypatch.setenv("BOOKING_URL", url)
    monkeypatch.setenv("BOOKING_KEY", "s3cret")
    result = await http_runner(tmp_path, path).run({"guests": 2})
    assert set(result) == {"error"} and expected in result["error"], result


async def test_http_tool_without_its_secret_or_server_is_an_error_result(tmp_path, monkeypatch):
    monkeypatch.delenv("BOOKING_URL", raising=False)
    result = await http_runner(tmp_path, "/ok/bookings").run({"guests": 2})
    assert result == {"error": "book_table failed: environment variable BOOKING_URL is not set"}
    monkeypatch.setenv("BOOKING_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BOOKING_KEY", "k")
    refused = await http_runner(tmp_path, "/ok/bookings").run({"guests": 2})
    assert "ConnectError" in refused["error"]
