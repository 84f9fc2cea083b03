"""The dashboard in a real headless Chromium, watching a real phone call to ``voxline serve``.

The server runs with ``VOXLINE_ADMIN_TOKEN`` set and a persona whose LLM must call
a Python tool. The browser signs in with the token; a Twilio-protocol caller then
asks a question. While the call is still on the line the page shows both sides of
the conversation as they are said; once it is over, the call opened from the
recent calls shows each turn's latency waterfall and its tool call. Screenshots
of both moments are saved in ``test-artifacts/`` (not committed). Without the
token the page and the API answer 401. And markup in what a caller says stays
text in the page (an in-process server fed hostile transcripts).
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Page, async_playwright

from tests.browser import Chromium
from tests.conftest import ROOT
from tests.servers import ServerProcess, start_voxline
from tests.speech import caller_voice, wer
from voxline.bot.call_events import CallInfo
from voxline.engines.llm import free_port
from voxline.processors.turn_trace import TurnTrace
from voxline.server.dashboard import add_dashboard_routes
from voxline.server.dashboard_auth import AdminAuth
from voxline.server.dashboard_calls import CallSearch
from voxline.server.live_calls import LiveCalls
from voxline.transports.twilio_caller import TwilioCaller

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
ADMIN_TOKEN = "dashboard-admin-token-0123456789"
AUTH_TOKEN = "test-auth-token-0123456789"
QUESTION = "Hi, where is my parcel? I posted it on Wednesday."
GREETING = "Hello, parcel desk."

PERSONA = f"""\
name: parcels
prompt: You are the phone assistant of a parcel service. Look parcels up with track_parcel.
greeting: {GREETING}
tools: [track_parcel]
tools_dir: tools
llm: {{tool_choice: track_parcel, max_tokens: 60}}
"""
TOOL = """\
name: track_parcel
description: Where the caller's parcel is now.
parameters:
  type: object
  properties:
    reference: {type: string, enum: [PX-1]}
  required: [reference]
python: parcels:track_parcel
"""
HANDLER = """\
def track_parcel(reference: str) -> dict:
    return {"status": "waiting at the depot", "reference": reference}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("dashboard")
    (tmp / "tools").mkdir()
    (tmp / "tools" / "track_parcel.yaml").write_text(TOOL)
    (tmp / "tools" / "parcels.py").write_text(HANDLER)
    (tmp / "parcels.yaml").write_text(PERSONA)
    port = free_port()
    config = tmp / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: parcels.yaml
            engines:
              llm: {{backend: llama_cpp}}  # the dashboard, not the LLM, is under test
            """
        )
    )
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_ADMIN_TOKEN": ADMIN_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
    }
    process: ServerProcess = start_voxline(config, env, port)
    silence = tmp / "silence.wav"  # the browser's microphone: the dashboard never opens it
    soundfile.write(str(silence), np.zeros(8000, dtype=np.int16), 16000, subtype="PCM_16")
    yield {"url": f"http://127.0.0.1:{port}", "process": process, "silence": silence}
    process.stop()


def test_without_the_admin_token_401(server):
    url = server["url"]
    page = httpx.get(url + "/dashboard", timeout=10)
    assert page.status_code == 401 and 'name="token"' in page.text
    for path in ("/dashboard/api/live", "/dashboard/api/calls", "/dashboard/api/stages"):
        assert httpx.get(url + path, timeout=10).status_code == 401, path
        wrong = {"Authorization": "Bearer not-the-admin-token-at-all"}
        assert httpx.get(url + path, headers=wrong, timeout=10).status_code == 401, path
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(url + "/dashboard/api/live", headers=right, timeout=10).status_code == 200
    # The rest of the server is not behind the dashboard's token.
    assert httpx.get(url + "/health/live", timeout=10).status_code == 200


async def sign_in(page: Page, url: str) -> None:
    response = await page.goto(url + "/dashboard")
    assert response is not None and response.status == 401
    await page.fill("#token", ADMIN_TOKEN)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    await page.wait_for_selector("#live-section")


def test_the_dashboard_shows_a_call_live_then_its_waterfall(server):
    url = server["url"]
    ARTIFACTS.mkdir(exist_ok=True)
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all(QUESTION), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    dialer = TwilioCaller(url, auth_token=AUTH_TOKEN, caller_id="+15557654321")

    async def watch() -> dict:
        browser = Chromium(server["silence"], width=1280, height=1000)
        try:
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.connect_over_cdp(browser.cdp_url)
                page = await chromium.contexts[0].new_page()
                await sign_in(page, url)
                # The caller stays on the line 4 s after the bot's answer: time for the page
                # to show the conversation while the call is still live.
                call = asyncio.create_task(
                    dialer.call(audio, voice.sample_rate, hang_up_after_quiet=4.0, timeout=120)
                )
                card = "#live .call:has(.line.caller) >> nth=0"
                await page.wait_for_selector(card, timeout=90_000)
                # The greeting and the answer (no page script is evaluated as a string:
                # the page's Content-Security-Policy forbids it, so the waits are selectors).
                await page.locator("#live .call .line.bot").nth(1).wait_for(timeout=90_000)
                live_lines = await page.eval_on_selector_all(
                    "#live .call .line",
                    "ls => ls.map(l => [l.classList[1], l.querySelector('.text').textContent])",
                )
                still_on_the_line = not call.done()
                await page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
                result = await call

                # The call ends: it leaves the live calls and is in the recent ones.
                await page.wait_for_selector("#live .empty", timeout=30_000)
                found = await page.evaluate(
                    f"fetch('/dashboard/api/calls/{dialer.call_sid}').then(r => r.json())"
                )
                row = f'#recent tr[data-call-id="{found["id"]}"]'
                await page.wait_for_selector(row, timeout=20_000)
                # Search: another persona finds nothing, this one finds the call.
                await page.fill("#search input[name=persona]", "nobody")
                await page.click("#search button[type=submit]")
                await page.locator(row).wait_for(state="detached", timeout=10_000)
                await page.fill("#search input[name=persona]", "parcels")
                await page.click("#search button[type=submit]")
                await page.wait_for_selector(row, timeout=10_000)
                source = await page.text_content("#recent-source")
                await page.click(row)
                await page.wait_for_selector(
                    '#detail-section .waterfall .bar[data-stage="stt"]', timeout=10_000
                )
                await page.wait_for_selector(
                    '#detail-section tr[data-tool="track_parcel"]', timeout=10_000
                )
                bars = await page.eval_on_selector_all(
                    "#detail-section .waterfall .bar",
                    """bars => bars.map(b => {
                      const r = b.getBoundingClientRect();
                      return [b.dataset.stage, Math.round(r.left), Math.round(r.width)];
                    })""",
                )
                await page.locator("#detail-section").scroll_into_view_if_needed()
                await page.screenshot(
                    path=str(ARTIFACTS / "dashboard-waterfall.png"), full_page=True
                )
                stages = await page.eval_on_selector_all(
                    "#stages tbody tr",
                    "rows => rows.map(r => [r.dataset.stage, r.children[1].textContent])",
                )
                await chromium.close()
                return {
                    "live_lines": live_lines,
                    "still_on_the_line": still_on_the_line,
                    "result": result,
                    "found": found,
                    "bars": bars,
                    "stages": stages,
                    "source": source,
                }
        finally:
            browser.stop()

    try:
        seen = asyncio.run(watch())
    except Exception:
        print(server["process"].output[-6000:])  # what the server said about the call
        raise
    print(f"\nlive transcript in the page: {seen['live_lines']}")
    print(f"waterfall bars (stage, left px, width px): {seen['bars']}")
    print(f"recent calls from: {seen['source']}")
    print(
        f"screenshots: {ARTIFACTS / 'dashboard-live.png'}, {ARTIFACTS / 'dashboard-waterfall.png'}"
    )

    # Live: both sides of the conversation, while the caller was still on the line.
    assert seen["still_on_the_line"], "the page showed the conversation only after the call"
    caller_lines = [text for who, text in seen["live_lines"] if who == "caller"]
    bot_lines = [text for who, text in seen["live_lines"] if who == "bot"]
    assert caller_lines and wer(QUESTION, " ".join(caller_lines)) <= 0.35, caller_lines
    assert wer(GREETING, bot_lines[0]) <= 0.35, bot_lines
    assert len(bot_lines) >= 2 and bot_lines[1].strip(), bot_lines

    # After: the call's turns with their stages on one axis, and the tool it called.
    detail = seen["found"]
    assert detail["call_sid"] == dialer.call_sid and not detail["live"]
    # The question mark can commit "where is my parcel?" before the caller goes on: that
    # turn is then superseded (commit and stt only), and the answered turn is the next one.
    answered = [turn for turn in detail["turns"]
                if any(bar["stage"] == "transport" for bar in turn["bars"])]  # fmt: skip
    assert answered, detail["turns"]
    stages = {bar["stage"] for bar in answered[0]["bars"]}
    assert {"stt", "llm_first_token", "tts_first_audio", "transport"} <= stages, stages
    # The tool is forced: each answered turn calls it (once, or twice when the question
    # was heard as two turns).
    tools = [tool["name"] for turn in detail["turns"] for tool in turn["tools"]]
    assert tools and set(tools) == {"track_parcel"}, detail["turns"]
    assert len(tools) <= len(detail["turns"]), detail["turns"]
    drawn = {stage for stage, _left, width in seen["bars"] if width > 0}
    assert {"stt", "llm_first_token", "tts_first_audio", "tool"} <= drawn, seen["bars"]
    # A later stage starts to the right of an earlier one on the shared axis.
    left = {stage: px for stage, px, _width in seen["bars"]}
    assert left["stt"] < left["tts_first_audio"], seen["bars"]
    counts = dict(seen["stages"])
    assert int(counts["voice_to_voice"]) >= 1, seen["stages"]
    assert (ARTIFACTS / "dashboard-waterfall.png").stat().st_size > 10_000
    assert Path(ARTIFACTS / "dashboard-live.png").is_file()


HOSTILE = (
    '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    "</span><b onmouseover=window.pwned=3>hi</b>"
)


def test_caller_text_with_markup_is_shown_as_text(tmp_path):
    """What a caller says is untrusted: markup in a transcript stays text in the page."""
    live = LiveCalls()
    app = FastAPI()
    add_dashboard_routes(app, live, CallSearch(live), AdminAuth(token=ADMIN_TOKEN))
    info = CallInfo(persona="x<i>persona</i>", transport="webrtc", caller="<b>key</b>")
    live.call_started(info)
    live.caller_said(info, HOSTILE)
    live.bot_said(info, HOSTILE)
    turn = TurnTrace(index=1, caller_text=HOSTILE, bot_text=HOSTILE, complete=True)
    turn.speech_end, turn.stt_request, turn.transcribed = 0, 100_000_000, 200_000_000
    turn.tool_calls = [{"name": "<svg onload=1>", "arguments": {"q": HOSTILE}, "result": HOSTILE}]
    live.turn_finished(info, turn)
    port = free_port()
    silence = tmp_path / "silence.wav"
    soundfile.write(str(silence), np.zeros(8000, dtype=np.int16), 16000, subtype="PCM_16")

    async def look() -> dict:
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        serving = asyncio.create_task(server.serve())
        browser = Chromium(silence)
        try:
            while not server.started:
                await asyncio.sleep(0.02)  # uvicorn's own start flag, under the test's timeout
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.connect_over_cdp(browser.cdp_url)
                page = await chromium.contexts[0].new_page()
                await sign_in(page, f"http://127.0.0.1:{port}")
                await page.wait_for_selector("#live .call .line.caller")
                await page.click("#live .call button.open")
                await page.wait_for_selector('#detail-section tr[data-tool="<svg onload=1>"]')
                seen = {
                    "texts": await page.eval_on_selector_all(
                        "#live .line .text, #detail-turns .line .text",
                        "nodes => nodes.map(n => n.textContent)",
                    ),
                    "persona": await page.text_content("#live .call .persona"),
                    "injected": await page.eval_on_selector_all(
                        "main img, main script, main b, main svg, main i", "nodes => nodes.length"
                    ),
                    "pwned": await page.evaluate("() => window.pwned === undefined"),
                }
                await chromium.close()
                return seen
        finally:
            browser.stop()
            server.should_exit = True
            await serving

    seen = asyncio.run(asyncio.wait_for(look(), 60))
    assert seen["texts"] and all(text == HOSTILE for text in seen["texts"]), seen["texts"]
    assert seen["persona"] == "x<i>persona</i>"
    assert seen["injected"] == 0 and seen["pwned"], seen
