"""The widget in a real headless Chromium against a real voxline server on loopback.

Chromium's fake microphone plays a Piper WAV asking a question; the page connects over
WebRTC, the server transcribes and answers, and the page plays the answer and shows both
sides of the conversation. Timing is measured in the page and printed, not asserted."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import SCRIPTED_MICROPHONE, Chromium, load_clip
from conftest import BANK_PERSONA, ROOT
from playwright.async_api import async_playwright
from servers import ServerProcess, start_voxline
from speech import synthesize_wav, wer

from voxline.engines.llm import free_port

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / "test-artifacts"
CONNECTED = "['connected', 'speaking', 'listening'].includes(window.voxline.state)"
QUESTION = "Can you tell me what time the branch opens on Saturday?"
OTHER_QUESTION = "I would like to check the balance of my savings account."
# Levels measured in the page with Web Audio, for the latency of each side as heard there.
METER = """
() => {
  const v = window.voxline;
  const context = new AudioContext();
  const meter = (stream) => {
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    context.createMediaStreamSource(stream).connect(analyser);
    return analyser;
  };
  const mic = meter(v.micStream), bot = meter(v.remoteStream);
  const data = new Float32Array(1024);
  const rms = (analyser) => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0; for (const x of data) sum += x * x; return Math.sqrt(sum / data.length);
  };
  v.levels = [];
  v.meterTimer = setInterval(() => v.levels.push([performance.now(), rms(mic), rms(bot)]), 20);
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("widget")
    config = tmp / "voxline.yaml"
    # The browser calls, not the LLM, are under test: the light engine starts in a second.
    config.write_text(
        f"default_persona: {BANK_PERSONA}\nmax_calls: 4\nengines: {{llm: {{backend: llama_cpp}}}}\n"
        "log_content: true\n"  # the tests read the call's context from the log
    )
    port = free_port()
    env = {**os.environ, "VOXLINE_OFFLINE": "1", "VOXLINE_LOG_LEVEL": "INFO"}
    process: ServerProcess = start_voxline(config, env, port)
    yield {"url": f"http://127.0.0.1:{port}", "process": process, "tmp": tmp}
    process.stop()


def microphone(tmp: Path, text: str, name: str) -> Path:
    # The question starts after the greeting has been played: it ends 3.5-4.6 s after the
    # microphone opens with two browsers at once. Speech over the greeting's last words
    # loses its first words to the page's echo cancellation, so the margin is wide.
    return synthesize_wav(text, tmp / f"{name}.wav", lead_secs=8.0)


async def call_from_browser(url: str, wav: Path, *, timeout: float = 90.0) -> dict:
    """Open the demo page, start a call, wait for the first answered turn; report the page."""
    browser = Chromium(wav)
    try:
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.connect_over_cdp(browser.cdp_url)
            page = await chromium.contexts[0].new_page()
            loaded = time.perf_counter()
            await page.goto(url + "/")
            await page.evaluate("window.voxline.start()")
            await page.wait_for_function(CONNECTED, timeout=30_000)
            connected = time.perf_counter() - loaded
            await page.evaluate(METER)
            await page.wait_for_function(
                "(window.voxline.events || []).some(e => e.type === 'turn' && !e.interrupted)",
                timeout=timeout * 1000,
            )
            # Let the reply play for a while so the page hears it.
            await page.wait_for_function(
                "window.voxline.events.filter(e => e.type === 'bot-stopped').length >= 2",
                timeout=30_000,
            )
            report = await page.evaluate(
                """() => {
                  const v = window.voxline;
                  clearInterval(v.meterTimer);
                  const log = [...v.root.querySelectorAll('.log p')]
                    .map(p => [p.className, p.textContent]);
                  return {events: v.events, levels: v.levels, log, connectMs: v.connectMs,
                          state: v.state};
                }"""
            )
            report["connected_secs"] = connected
            await page.evaluate("window.voxline.hangUp()")
            await chromium.close()
            return report
    finally:
        browser.stop()


def heard_latency_ms(levels: list[list[float]]) -> float | None:
    """From the caller's last voiced mic sample to the first voiced bot sample after it."""
    voiced_mic = [t for t, mic, _ in levels if mic > 0.01]
    if not voiced_mic:
        return None
    last = voiced_mic[-1]
    after = [t for t, _, bot in levels if t > last and bot > 0.01]
    return after[0] - last if after else None


def check_conversation(report: dict, question: str, *, other: str | None = None) -> None:
    """The page's caller asked ``question`` and heard an answer. With ``other`` (the
    question of a call at the same moment), what the server heard must be nearer this
    call's question than the other's, within a WER of 0.4: two streams at once on two
    cores leave tiny.en less accurate (a CI run heard "I would like to check the balance
    of my savings account." as "I would like to go on to my savings account."), and
    accuracy alone is the single call's test."""
    max_wer = 0.2 if other is None else 0.4
    turns = [e for e in report["events"] if e["type"] == "turn"]
    answered = next(i for i, turn in enumerate(turns) if not turn["interrupted"])
    # A question said with a pause can reach the server as two turns, the first cut
    # off by the second half: the caller's side is every turn up to the answer.
    caller = " ".join(turn["caller"] for turn in turns[: answered + 1])
    turn = turns[answered]
    print(
        f"\npage connected in {report['connectMs']:.0f} ms (load+connect "
        f"{report['connected_secs']:.2f} s); caller: {caller!r}; bot: {turn['bot']!r}; "
        f"server voice-to-voice {turn['latency_ms']['voice_to_voice']} ms; heard in the page "
        f"{heard_latency_ms(report['levels'])} ms"
    )
    assert wer(question, caller) <= max_wer, caller
    if other is not None:
        assert wer(question, caller) < wer(other, caller), caller
    assert turn["bot"].strip()
    assert max(bot for _, _, bot in report["levels"]) > 0.01, "the page heard no bot audio"
    kinds = [kind for kind, _ in report["log"]]
    assert "user" in kinds and "bot" in kinds, report["log"]
    shown = " ".join(text for kind, text in report["log"] if kind == "user")
    assert wer(question, shown) <= max_wer, report["log"]


def test_a_browser_call_end_to_end(server):
    wav = microphone(server["tmp"], QUESTION, "question")
    report = asyncio.run(call_from_browser(server["url"], wav))
    check_conversation(report, QUESTION)


def test_two_browsers_get_independent_conversations(server):
    first = microphone(server["tmp"], QUESTION, "first")
    second = microphone(server["tmp"], OTHER_QUESTION, "second")

    async def both():
        return await asyncio.gather(
            call_from_browser(server["url"], first), call_from_browser(server["url"], second)
        )

    one, two = asyncio.run(both())
    check_conversation(one, QUESTION, other=OTHER_QUESTION)
    check_conversation(two, OTHER_QUESTION, other=QUESTION)


def test_the_widget_fits_a_phone_screen(server):
    wav = microphone(server["tmp"], QUESTION, "phone")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "widget-375px.png"

    async def render():
        browser = Chromium(wav, width=375, height=740)
        try:
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.connect_over_cdp(browser.cdp_url)
                page = await chromium.contexts[0].new_page()
                await page.set_viewport_size({"width": 375, "height": 740})
                await page.goto(server["url"] + "/")
                box = await page.evaluate(
                    """() => {
                      const r = window.voxline.root.querySelector('.panel').getBoundingClientRect();
                      const b = window.voxline.root.querySelector('button.call');
                      return {left: r.left, right: r.right, width: r.width,
                              label: b.getAttribute('aria-label'),
                              height: b.getBoundingClientRect().height};
                    }"""
                )
                await page.keyboard.press("Tab")
                focused = await page.evaluate("(window.voxline.root.activeElement || {}).className")
                await page.screenshot(path=str(shot), full_page=True)
                await chromium.close()
                return box, focused
        finally:
            browser.stop()

    box, focused = asyncio.run(render())
    print(f"\nscreenshot: {shot}; panel {box}")
    assert box["left"] >= 0 and box["right"] <= 375 and box["width"] > 200
    assert box["label"] == "Start a voice call" and box["height"] >= 44
    assert focused == "call", "the call button is not reachable with the keyboard"
    assert shot.stat().st_size > 1000


def test_a_browser_that_vanishes_releases_its_call(server):
    wav = microphone(server["tmp"], QUESTION, "vanish")
    process = server["process"]

    async def vanish():
        browser = Chromium(wav)
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.connect_over_cdp(browser.cdp_url)
            page = await chromium.contexts[0].new_page()
            await page.goto(server["url"] + "/")
            await page.evaluate("window.voxline.start()")
            await page.wait_for_function("window.voxline.pcId", timeout=30_000)
            pc_id = await page.evaluate("window.voxline.pcId")
            await page.wait_for_function(CONNECTED, timeout=30_000)
            browser.kill()  # no hang-up, no goodbye: the machine is gone
            browser.stop()
            return pc_id

    pc_id = asyncio.run(vanish())
    gone = time.monotonic()
    deadline = gone + 60
    while time.monotonic() < deadline:
        if any(f"browser call {pc_id} ended" in line for line in process.lines):
            break
        time.sleep(0.2)  # polling the server's log, with a deadline
    released = time.monotonic() - gone
    print(f"\nthe vanished browser's call was released {released:.1f} s after it vanished")
    assert any(f"browser call {pc_id} ended" in line for line in process.lines)
    metrics = httpx.get(server["url"] + "/metrics", timeout=10).text
    assert re.search(r"^voxline_calls_active 0\.0$", metrics, re.MULTILINE), metrics


# How much of the answer the caller hears before cutting in: its first chunk or two (a short
# answer of one sentence can be over by 4 s).
HEARD_BEFORE_BARGE_IN_SECS = 3.0


def test_a_browser_barge_in_leaves_in_the_context_only_what_was_sent(server):
    """The caller talks over the answer: the server's context keeps the chunks whose
    audio went out, ending within one chunk of where the page stopped hearing it."""
    import json

    from speech import caller_voice

    from voxline.personas import load_persona
    from voxline.processors.sentence_chunker import SentenceChunker

    # The caller speaks on cue, not on a clock: the question once the greeting is over, the
    # barge-in once the page has heard the answer for a while, however late it started.
    voice = caller_voice()
    question = voice.synthesize_all(
        "Can you tell me about your branch opening hours and your card services?"
    )
    barge_in = voice.synthesize_all("Wait, stop. I have another question.")

    async def call() -> dict:
        browser = Chromium(None)
        try:
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.connect_over_cdp(browser.cdp_url)
                page = await chromium.contexts[0].new_page()
                await page.add_init_script(SCRIPTED_MICROPHONE)
                await page.goto(server["url"] + "/")
                await load_clip(page, "question", question, voice.sample_rate)
                await load_clip(page, "barge-in", barge_in, voice.sample_rate)
                await page.evaluate("window.voxline.start()")
                await page.wait_for_function(CONNECTED, timeout=30_000)
                await page.evaluate(METER)
                await page.wait_for_function(
                    "window.voxline.events.some(e => e.type === 'bot-stopped')", timeout=30_000
                )
                asked = await page.evaluate("window.scriptedMic.play('question')")
                await page.wait_for_function(
                    f"window.voxline.levels.some(([t, , bot]) => t > {asked} && bot > 0.01)",
                    timeout=30_000,
                )
                await asyncio.sleep(HEARD_BEFORE_BARGE_IN_SECS)
                turns = await page.evaluate(
                    "window.voxline.events.filter(e => e.type === 'turn').length"
                )
                await page.evaluate("window.scriptedMic.play('barge-in')")
                # The cut-off answer's turn ends with the interruption; the levels go on a
                # little, for the page's last heard sample of it.
                await page.wait_for_function(
                    "window.voxline.events.filter(e => e.type === 'turn').length > " + str(turns),
                    timeout=30_000,
                )
                await asyncio.sleep(1.0)
                report = await page.evaluate(
                    """() => {
                      const v = window.voxline;
                      clearInterval(v.meterTimer);
                      return {events: v.events, levels: v.levels, pcId: v.pcId};
                    }"""
                )
                await page.evaluate("window.voxline.hangUp()")
                await chromium.close()
                return report
        finally:
            browser.stop()

    report = asyncio.run(call())
    process, pc_id = server["process"], report["pcId"]
    deadline = time.monotonic() + 30
    while not any(f"browser call {pc_id} context " in line for line in process.lines):
        assert time.monotonic() < deadline, "the server did not log the call's context"
        time.sleep(0.2)  # polling the server's log, with a deadline
    line = next(line for line in process.lines if f"browser call {pc_id} context " in line)
    context = json.loads(line.split(" context ", 1)[1])

    # The answer the caller talked over.
    turns = [e for e in report["events"] if e["type"] == "turn"]
    # The last answer cut off after it was heard (a question said with a pause can cut
    # off an answer to its first half too).
    cut_off = [t for t in turns if t["interrupted"] and t["latency_ms"]["voice_to_voice"]]
    seen = [(event["type"], event.get("text", "")) for event in report["events"]]
    assert cut_off, f"no answer was cut off by the barge-in: turns {turns}, events {seen}"
    reply = cut_off[-1]
    persona = load_persona(BANK_PERSONA)  # its voice is the caller's voice

    # What the page heard of the answer: from its first voiced sample after the question
    # to the last one before the answer to the barge-in.
    levels = report["levels"]
    mic = [t for t, level, _ in levels if level > 0.01]
    gap = next(i for i in range(1, len(mic)) if mic[i] - mic[i - 1] > 1500)
    question_end, barge_in_end = mic[gap - 1], mic[-1]
    bot = [t for t, _, level in levels if level > 0.01 and question_end < t < barge_in_end + 500]
    heard = (bot[-1] - bot[0]) / 1000 if bot else 0.0

    def words(text: str) -> list[str]:
        return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()

    messages = [m for m in context if m["role"] in ("user", "assistant")]
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    after = messages[first_user + 1] if first_user + 1 < len(messages) else None
    kept_text = after["content"] if after and after["role"] == "assistant" else ""
    kept, reply_words = words(kept_text), words(reply["bot"])
    # The chunks after the kept text are cut again from the rest of the answer, after the
    # kept text (so by the rules of later chunks, not the first's). The chunker may have
    # cut the real ones shorter, on time (the first chunk's deadline, the audio's runway):
    # the next chunk found here is the longest the real one can have been.
    rest = " ".join(reply["bot"].split()[len(kept_text.split()) :])
    chunker = SentenceChunker(
        min_first_words=persona.chunking.min_first_words, max_chars=persona.chunking.max_chars
    )
    if kept_text:
        chunker.push(kept_text + " ")
        # What is left of the kept text went out as a chunk of its own: a first chunk cut on
        # time ends at no boundary ("I'm sorry for the"), and the next chunk starts after it.
        chunker.take_words(min_words=1, at_clause=False)
    following = [*chunker.push(rest), *filter(None, [chunker.flush()])]
    assert following, "the barge-in came after the whole answer"
    kept_secs = len(voice.synthesize_all(kept_text)) / 2 / voice.sample_rate if kept else 0.0
    next_secs = len(voice.synthesize_all(following[0])) / 2 / voice.sample_rate
    print(
        f"\nanswer: {reply['bot']!r}\nheard in the page {heard:.2f} s of the answer\n"
        f"kept in the context: {kept_text!r} ({kept_secs:.2f} s); next chunk "
        f"{following[0]!r} ({next_secs:.2f} s)"
    )
    assert heard > 1.0, "the page heard too little of the answer for a barge-in"
    assert reply_words[: len(kept)] == kept, (kept_text, reply["bot"])
    # Every kept chunk was sent; the one playing when the caller cut in is the only heard
    # one left out (0.5 s: the page's jitter buffer, its 20 ms meter and Piper's pauses).
    assert kept_secs <= heard + 0.5, (kept_secs, heard)
    assert heard <= kept_secs + next_secs + 0.5, (kept_secs, next_secs, heard)
