"""The dashboard's routes in-process: who may look, what the JSON API answers, bad input.

The app here has only the dashboard's routes, fed by call events as the call hub
sends them; the real server, a real call and a real browser are in
tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from voxline.bot.call_events import CallEvents, CallInfo
from voxline.processors.turn_trace import TurnTrace
from voxline.records.settings import RecordsConfig
from voxline.records.store import RecordStore
from voxline.records.writer import RecordWriter, attached
from voxline.server.dashboard import add_dashboard_routes
from voxline.server.dashboard_auth import COOKIE, AdminAuth
from voxline.server.dashboard_calls import CallSearch
from voxline.server.live_calls import MAX_LINES, LiveCalls

TOKEN = "dashboard-test-token-0123456789"
MS = 1_000_000


def app_with(live: LiveCalls, token: str | None = TOKEN) -> TestClient:
    app = FastAPI()
    add_dashboard_routes(app, live, CallSearch(live), AdminAuth(token=token or ""))
    return TestClient(app, base_url="http://127.0.0.1")


def traced_turn(index: int = 1) -> TurnTrace:
    """A turn whose stages are known: the caller stopped at 1 s of the call's clock."""
    turn = TurnTrace(index=index, caller_text="What is my balance?", bot_text=" It is 12 dollars.")
    turn.speech_end = 1000 * MS
    turn.stt_request = 1100 * MS
    turn.transcribed = 1250 * MS
    turn.llm_first_token = 1400 * MS
    turn.first_chunk = 1450 * MS
    turn.tts_first_audio = 1600 * MS
    turn.committed = 1300 * MS
    turn.audio_out = 1620 * MS
    turn.complete = True
    turn.tool_calls = [{"name": "get_balance", "arguments": {"account": "x"}, "result": 12}]
    turn.tool_times = [(1300 * MS, 1350 * MS)]
    return turn


def phone_call(live: LiveCalls) -> CallInfo:
    info = CallInfo(persona="bank_support", transport="twilio", caller="+15551234567")
    info.call_sid = "CA" + "7" * 32
    live.call_started(info)
    return info


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_the_environment_variable_the_dashboard_is_not_there():
    client = app_with(LiveCalls(), token=None)
    for path in ("/dashboard", "/dashboard/api/live", "/dashboard/static/dashboard.js"):
        assert client.get(path, headers=bearer()).status_code == 404
    assert client.post("/dashboard/login", data={"token": ""}).status_code == 404


def test_a_short_token_leaves_it_off():
    auth = AdminAuth(token="short")
    assert not auth.enabled and "shorter than 16" in (auth.problem or "")


def test_without_the_token_401_and_the_sign_in_form():
    client = app_with(LiveCalls())
    page = client.get("/dashboard")
    assert page.status_code == 401 and 'name="token"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for path in ("/dashboard/api/live", "/dashboard/api/calls", "/dashboard/api/stages"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/dashboard/api/live", headers=bearer(TOKEN + "x")).status_code == 401
    # Not in the URL: a token there would end up in logs and the history.
    assert client.get(f"/dashboard/api/live?token={TOKEN}").status_code == 401
    # Bad query parameters are not looked at before the token is.
    assert client.get("/dashboard/api/calls?since=garbage").status_code == 401


def test_sign_in_sets_an_http_only_strict_cookie_that_opens_page_and_api():
    client = app_with(LiveCalls())
    wrong = client.post("/dashboard/login", data={"token": "not-the-token"})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    signed_in = client.post("/dashboard/login", data={"token": TOKEN}, follow_redirects=False)
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert TOKEN not in cookie
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/api/live").status_code == 200
    client.post("/dashboard/logout")
    assert client.get("/dashboard/api/live").status_code == 401


def test_a_forged_or_expired_session_is_refused():
    now = [1_000_000.0]
    auth = AdminAuth(token=TOKEN, clock=lambda: now[0])
    cookie = auth.session_cookie()
    assert auth.session_valid(cookie)
    expiry, _, signature = cookie.partition(".")
    assert not auth.session_valid(f"{int(expiry) + 999}.{signature}")
    assert not auth.session_valid(f"{expiry}.{'0' * len(signature)}")
    assert not auth.session_valid("garbage") and not auth.session_valid("")
    now[0] += 13 * 3600
    assert not auth.session_valid(cookie)
    assert not AdminAuth(token=TOKEN + "-rotated").session_valid(auth.session_cookie())


def test_wrong_tokens_are_rate_limited_per_address():
    client = app_with(LiveCalls())
    codes = [
        client.post("/dashboard/login", data={"token": "wrong"}).status_code for _ in range(12)
    ]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    # Even the right token waits now: guessing is not made faster by the right answer.
    assert client.get("/dashboard/api/live", headers=bearer()).status_code == 429


def test_live_calls_carry_the_transcript_as_it_is_said():
    live = LiveCalls()
    client = app_with(live)
    info = phone_call(live)
    live.caller_said(info, "What is my balance?")
    live.bot_said(info, "It is")
    live.bot_said(info, "12 dollars.")
    body = client.get("/dashboard/api/live", headers=bearer()).json()
    [call] = body["calls"]
    assert call["persona"] == "bank_support" and call["call_sid"] == info.call_sid
    assert call["caller"] == "+1555***4567"  # the number masked, as in the log
    assert [(line["who"], line["text"]) for line in call["lines"]] == [
        ("caller", "What is my balance?"),
        ("bot", "It is 12 dollars."),
    ]
    again = client.get(f"/dashboard/api/live?since={body['version']}", headers=bearer()).json()
    assert again == {"version": body["version"], "unchanged": True}
    live.bot_heard(info, 1, "It is", True)  # the caller cut the reply off
    call = client.get("/dashboard/api/live", headers=bearer()).json()["calls"][0]
    assert call["lines"][-1] == {**call["lines"][-1], "text": "It is", "interrupted": True}


def test_a_finished_turn_gives_the_waterfall_and_the_stage_percentiles():
    live = LiveCalls()
    client = app_with(live)
    info = phone_call(live)
    live.turn_finished(info, traced_turn())
    call = client.get(f"/dashboard/api/calls/{info.call_sid}", headers=bearer()).json()
    [turn] = call["turns"]
    bars = {bar["stage"]: (bar["start_ms"], bar["end_ms"]) for bar in turn["bars"]}
    assert bars == {
        "commit": (0, 300),
        "stt": (100, 250),
        "llm_first_token": (250, 400),
        "first_chunk": (400, 450),
        "tts_first_audio": (450, 600),
        "transport": (600, 620),
    }
    [tool] = turn["tools"]
    assert tool["name"] == "get_balance" and tool["duration_ms"] == 50
    assert (tool["start_ms"], tool["end_ms"]) == (300, 350)
    stats = client.get("/dashboard/api/stages", headers=bearer()).json()["stages"]
    by_stage = {stat["stage"]: stat for stat in stats}
    assert by_stage["voice_to_voice"] == {
        "stage": "voice_to_voice",
        "count": 1,
        "p50_ms": 620.0,
        "p95_ms": 620.0,
    }


def test_stage_percentiles_cover_only_the_last_hour():
    now = [0.0]
    live = LiveCalls(clock=lambda: now[0])
    info = phone_call(live)
    for index, v2v in enumerate((100, 200, 300, 400, 5000)):
        turn = traced_turn(index + 1)
        turn.audio_out = turn.speech_end + v2v * MS
        live.turn_finished(info, turn)
    stat = {s.stage: s for s in live.stage_stats()}["voice_to_voice"]
    assert (stat.count, stat.p50_ms, stat.p95_ms) == (5, 300.0, 4080.0)
    now[0] = 3601.0
    assert {s.stage: s for s in live.stage_stats()}["voice_to_voice"].count == 0


def test_ended_calls_are_searchable_by_persona_and_date():
    live = LiveCalls()
    client = app_with(live)
    info = phone_call(live)
    other = CallInfo(persona="dental", transport="webrtc", caller="demo")
    live.call_started(other)
    live.call_ended(info, "caller hung up", traced_turn(2))
    listed = client.get("/dashboard/api/calls?persona=bank_support", headers=bearer()).json()
    assert [call["id"] for call in listed["calls"]] == [info.call_id]
    assert listed["calls"][0]["end_reason"] == "caller hung up"
    assert listed["source"] == "memory"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = client.get("/dashboard/api/calls", params={"since": future}, headers=bearer()).json()
    assert later["calls"] == []
    both = client.get("/dashboard/api/calls", headers=bearer()).json()["calls"]
    assert {call["persona"] for call in both} == {"bank_support", "dental"}
    detail = client.get(f"/dashboard/api/calls/{info.call_id}", headers=bearer()).json()
    assert detail["turns"][0]["unfinished"] is True and detail["live"] is False


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"persona": "x' OR '1'='1"}, 200),
        ({"persona": "x" * 201}, 400),
        ({"since": "yesterday"}, 400),
        ({"limit": "0"}, 400),
        ({"limit": "100000"}, 400),
        ({"unknown": "1"}, 400),
    ],
)
def test_bad_search_input_is_refused_or_finds_nothing(query, status):
    live = LiveCalls()
    phone_call(live)
    response = app_with(live).get("/dashboard/api/calls", params=query, headers=bearer())
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["calls"] == []
    else:
        assert response.json()["error"]


@pytest.mark.parametrize("call_id", ["nope", "../../etc/passwd", "x" * 65, "ü", "%00"])
def test_bad_call_ids_are_not_found(call_id):
    response = app_with(LiveCalls()).get(f"/dashboard/api/calls/{call_id}", headers=bearer())
    assert response.status_code == 404


def test_caller_text_is_data_and_every_view_is_bounded():
    live = LiveCalls()
    client = app_with(live)
    info = phone_call(live)
    script = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    for _ in range(MAX_LINES + 50):
        live.caller_said(info, script)
        live.bot_said(info, "ok")
    call = client.get("/dashboard/api/live", headers=bearer()).json()["calls"][0]
    assert len(call["lines"]) == MAX_LINES
    assert call["lines"][-2]["text"] == script  # JSON carries it as text; the page uses textContent
    page = client.get("/dashboard", headers=bearer())
    script_js = client.get("/dashboard/static/dashboard.js").text
    assert "innerHTML" not in script_js and "insertAdjacentHTML" not in script_js
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert client.get("/dashboard/static/../dashboard.py").status_code == 404


def test_recent_calls_and_waterfalls_come_from_the_call_records(tmp_path):
    """A call recorded on a real SQLite file by the records' writer, read by the dashboard."""

    async def scenario() -> None:
        url = f"sqlite:///{tmp_path}/records.sqlite3"
        store = RecordStore(url)
        await store.open()
        writer = RecordWriter(store, RecordsConfig())
        info = CallInfo(persona="bank_support", transport="twilio", caller="+15551234567")
        info.call_sid, info.clock_origin_ns = "CA" + "5" * 32, 1_790_000_000_000_000_000
        async with attached(writer, CallEvents()):
            writer.call_started(info)
            writer.bot_heard(info, 0, "Hello, bank.", False)
            writer.turn_finished(info, traced_turn())
            writer.bot_heard(info, 1, "It is", True)
            info.ended_at = datetime.now(UTC)
            writer.call_ended(info, "caller hung up", None)
        reader = RecordStore(url)
        live = LiveCalls()  # a fresh process: nothing in memory, everything from the records
        app = FastAPI()
        add_dashboard_routes(app, live, CallSearch(live, lambda: reader), AdminAuth(token=TOKEN))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                listed = (await client.get("/dashboard/api/calls", headers=bearer())).json()
                assert listed["source"] == "records"
                [line] = listed["calls"]
                assert (line["id"], line["turns"]) == (info.call_id, 1)
                assert line["caller"] == "+1555***4567"
                hostile = {"persona": "' OR 1=1 --"}
                none = await client.get("/dashboard/api/calls", params=hostile, headers=bearer())
                assert none.json()["calls"] == []
                path = f"/dashboard/api/calls/{info.call_sid}"
                call = (await client.get(path, headers=bearer())).json()
                assert call["id"] == info.call_id and call["end_reason"] == "caller hung up"
                [turn] = call["turns"]
                assert turn["bot_heard"] == "It is [interrupted]"
                bars = {bar["stage"]: (bar["start_ms"], bar["end_ms"]) for bar in turn["bars"]}
                assert bars["stt"] == (100, 250) and bars["transport"] == (600, 620)
                [tool] = turn["tools"]
                assert (tool["start_ms"], tool["end_ms"], tool["duration_ms"]) == (300, 350, 50)
                assert [line["who"] for line in call["lines"]] == ["bot", "caller", "bot"]
                missing = await client.get("/dashboard/api/calls/" + "ab" * 8, headers=bearer())
                assert missing.status_code == 404
        finally:
            await reader.close()

    asyncio.run(scenario())
