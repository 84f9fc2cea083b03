"""Graceful drain: SIGTERM stops admitting, lets calls go on, says goodbye at the deadline.

The first tests drive :class:`~voxline.server.drain.Drain` with stand-in calls.
The last one is a real ``voxline serve`` (llama.cpp, Whisper, Piper) with
``drain_timeout_secs: 15``, a Twilio-protocol caller and the Twilio REST stand-in:
SIGTERM arrives while the caller asks a question; the answer is still spoken in
full, nothing else is said until the deadline, then the persona's goodbye plays and
the call is hung up through the REST API. A call tried during the drain hears
busy, readiness is 503 throughout, the LLM server stops only after the call, and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
import textwrap
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soxr
from loguru import logger

from tests.servers import start_rest_standin, start_voxline
from tests.speech import caller_voice, normalize
from voxline.engines.llm import free_port
from voxline.engines.whisper import SAMPLE_RATE, WhisperEngine
from voxline.models import resolve_whisper
from voxline.server.admission import Admission
from voxline.server.drain import Drain
from voxline.server.signals import DrainOnSignal
from voxline.transports.caller_frames import RATE
from voxline.transports.dial_result import DialError
from voxline.transports.levels import is_voiced
from voxline.transports.twilio_caller import TwilioCaller

AUTH_TOKEN = "test-auth-token-0123456789"
ACCOUNT_SID = "AC" + "2" * 32
# Room for the answer on a slow CPU: one took 3.7 s to start and ran into a 12 s deadline.
DRAIN_SECS = 15.0
GOODBYE = "The office is closing now. Goodbye."


class StandInCall:
    """A call that holds a line until it hangs up or is ended with a goodbye."""

    def __init__(self, drain: Drain, name: str):
        self.drain, self.name = drain, name
        self.ended_by_goodbye = False
        self.done = asyncio.Event()

    async def run(self) -> None:
        slot = self.drain.admission.try_take()
        assert slot is not None
        async with self.drain.admission.hold(slot):
            with self.drain.track(self.name, self.goodbye):
                await self.done.wait()

    async def goodbye(self) -> None:
        self.ended_by_goodbye = True
        self.done.set()


class NobodyReads(io.TextIOBase):
    """A stderr whose reader is gone: every write fails as on a closed pipe."""

    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_signals_drain_and_stop_a_server_whose_stderr_nobody_reads(monkeypatch):
    """The parent that read the server's stderr was killed (a supervisor, a benchmark): the
    lines about the signal cannot be written, and SIGTERM still drains and stops the server
    (it had ignored any number of them)."""
    broken = NobodyReads()
    monkeypatch.setattr(sys, "stderr", broken)
    sink = logger.add(broken, level="INFO", catch=True)
    try:
        drained = SimpleNamespace(started=True, should_exit=False, force_exit=False)
        handler = DrainOnSignal(drained, Drain(Admission(max_calls=2), timeout_secs=5))
        handler._handle(signal.SIGTERM)  # the first drains: no call in progress, at once
        assert handler._task is not None
        await asyncio.wait_for(handler._task, 5)
        assert drained.should_exit and handler.drain.draining

        stopped = SimpleNamespace(started=True, should_exit=False, force_exit=False)
        drain = Drain(Admission(max_calls=2), timeout_secs=60)
        call = StandInCall(drain, "a call that goes on")
        held = asyncio.create_task(call.run())
        await asyncio.sleep(0)  # the call takes its slot
        assert drain.admission.held == 1
        handler = DrainOnSignal(stopped, drain)
        handler._handle(signal.SIGTERM)  # drains, the call goes on
        handler._handle(signal.SIGTERM)  # the second stops at once
        assert stopped.should_exit and handler.stopped_by == signal.SIGTERM
        call.done.set()
        await held
    finally:
        logger.remove(sink)


async def test_calls_that_end_in_time_hear_no_goodbye():
    drain = Drain(Admission(max_calls=4), timeout_secs=5)
    calls = [StandInCall(drain, f"call {i}") for i in range(3)]
    tasks = [asyncio.create_task(call.run()) for call in calls]
    await asyncio.sleep(0.01)
    running = asyncio.create_task(drain.run())
    await asyncio.sleep(0.05)
    assert drain.draining and drain.admission.try_take() is None and not running.done()
    for call in calls:
        call.done.set()
        await asyncio.sleep(0.02)
    assert await asyncio.wait_for(running, 1)
    assert not any(call.ended_by_goodbye for call in calls) and drain.ended_at_deadline == 0
    await asyncio.gather(*tasks)


async def test_calls_left_at_the_deadline_hear_the_goodbye_and_one_failure_stops_no_other():
    drain = Drain(Admission(max_calls=4), timeout_secs=0.2, goodbye_grace_secs=2)
    calls = [StandInCall(drain, f"call {i}") for i in range(2)]
    tasks = [asyncio.create_task(call.run()) for call in calls]

    async def broken() -> None:
        raise RuntimeError("the REST API is down")

    slot = drain.admission.try_take()
    assert slot is not None
    with drain.track("call broken", broken):
        started = time.monotonic()
        running = asyncio.create_task(drain.run())
        await asyncio.sleep(0.5)
    slot.release()  # the broken call's stream closed after all
    assert await asyncio.wait_for(running, 2)
    assert 0.2 <= time.monotonic() - started < 2
    assert all(call.ended_by_goodbye for call in calls) and drain.ended_at_deadline == 3
    await asyncio.gather(*tasks)


async def test_an_unclaimed_promise_delays_the_drain_only_until_the_deadline():
    admission = Admission(max_calls=2)
    admission.try_take(key="CA1", hold_secs=60)  # its stream went to another process
    drain = Drain(admission, timeout_secs=0.2, goodbye_grace_secs=5)
    started = time.monotonic()
    assert await asyncio.wait_for(drain.run(), 2)  # no call to say goodbye to
    assert time.monotonic() - started < 1


def voiced_spans(played: list[tuple[float, np.ndarray]], gap: float = 0.7) -> list[list[float]]:
    """[start, end] of each stretch of the bot's voiced audio, on the caller's clock."""
    spans: list[list[float]] = []
    for start, pcm in played:
        if not pcm.size or not is_voiced(pcm):
            continue
        end = start + pcm.size / RATE
        if spans and start - spans[-1][1] <= gap:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return spans


def transcribe(heard: np.ndarray, start: float, end: float) -> str:
    samples = heard[int(start * RATE) : int(end * RATE)].astype(np.float32) / 32768.0
    audio = soxr.resample(samples, RATE, SAMPLE_RATE).astype(np.float32)
    return WhisperEngine(resolve_whisper("tiny.en")).transcribe_blocking(audio, language="en").text


@pytest.mark.slow
def test_sigterm_drains_a_live_call_then_says_goodbye_at_the_deadline(tmp_path):
    rest_log = tmp_path / "rest.jsonl"
    rest, rest_url = start_rest_standin(rest_log)
    (tmp_path / "desk.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: desk
            prompt: You are the front desk of a small shop. Answer in one short sentence.
            greeting: Hello, front desk.
            phrases: {{goodbye: {GOODBYE}}}
            limits: {{idle_prompt_secs: null}}
            llm: {{max_tokens: 24}}  # one short answer, over well before the deadline
            """
        )
    )
    port = free_port()
    config = tmp_path / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            public_url: http://127.0.0.1:{port}
            default_persona: desk.yaml
            max_calls: 2  # room for the second call: it is refused for the drain alone
            drain_timeout_secs: {DRAIN_SECS}
            engines:
              llm: {{backend: llama_cpp}}
            twilio:
              rest_base_url: {rest_url}
            """
        )
    )
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_OFFLINE": "1",
    }
    server = start_voxline(config, env, port)
    url = f"http://127.0.0.1:{port}"
    voice = caller_voice()
    pcm = np.frombuffer(voice.synthesize_all("What time do you open tomorrow morning?"), np.int16)
    question = pcm.astype(np.float32) / 32768.0
    sent_at: list[float] = []
    readiness: list[tuple[int, dict]] = []
    refused: list[str] = []

    async def sigterm_while_the_caller_speaks() -> None:
        async def send() -> None:
            sent_at.append(time.monotonic())
            os.kill(server.process.pid, signal.SIGTERM)

        asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(send()))

    async def probe_readiness() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while server.process.poll() is None:
                try:
                    response = await client.get(url + "/health/ready")
                except httpx.TransportError:
                    return  # the server has stopped listening
                readiness.append((response.status_code, response.json()))
                await asyncio.sleep(0.25)

    async def scenario():
        dialer = TwilioCaller(url, auth_token=AUTH_TOKEN)
        call = asyncio.create_task(
            dialer.call(
                question,
                voice.sample_rate,
                gate=sigterm_while_the_caller_speaks,
                hang_up_after_quiet=600,  # stays on the line until the server hangs up
                timeout=120,
            )
        )
        while not sent_at:
            await asyncio.sleep(0.05)
        probe = asyncio.create_task(probe_readiness())
        await asyncio.sleep(1.5)
        try:
            await TwilioCaller(url, auth_token=AUTH_TOKEN).request_stream()
        except DialError as exc:
            refused.append(str(exc))
        result = await call
        ended = time.monotonic()
        await asyncio.wait_for(probe, 60)
        return dialer, result, ended

    try:
        dialer, result, ended = asyncio.run(scenario())
        code = server.process.wait(60)
        exited = time.monotonic()
    finally:
        server.stop()
        rest.stop()
    output = server.output
    assert code == 0, output[-3000:]

    # The call went on: its question was answered in full, nothing cleared.
    assert result.turns and result.turns[0].bot_start is not None, output[-3000:]
    assert "clear" not in result.received
    # SIGTERM came while the caller was talking: 1 s after its first words began.
    sigterm = result.speech_onsets[0] + 1.0
    deadline = sigterm + DRAIN_SECS
    spans = voiced_spans(result.played)
    answer, goodbye = [s for s in spans if s[0] > sigterm], spans[-1]
    assert len(answer) >= 2, spans  # the answer after SIGTERM, then the goodbye
    assert all(end < deadline - 0.5 for _, end in answer[:-1]), (spans, deadline)
    assert goodbye[0] >= deadline - 0.5, (spans, deadline)
    heard = normalize(transcribe(result.heard, goodbye[0] - 0.2, goodbye[1] + 0.3))
    assert "closing" in heard or "goodbye" in heard, heard
    # ... and it was hung up through Twilio's REST API, like end_call does.
    records = [json.loads(line) for line in rest_log.read_text().splitlines()]
    assert [r["form"] for r in records if r["call"] == dialer.call_sid] == [{"Status": "completed"}]
    assert f"drain_timeout_secs ({DRAIN_SECS:g} s) reached: saying goodbye to 1 call" in output

    # A call tried during the drain heard busy; readiness was 503 all along.
    [busy] = refused
    assert "Reject" in busy and 'reason="busy"' in busy, busy
    assert readiness and all(code == 503 for code, _ in readiness), readiness
    assert all("draining: no new calls" in body["problems"] for _, body in readiness)

    # The engines closed after the last call; the process exited soon after it.
    llama_stopped = re.search(r"llama\.cpp server pid \d+ stopped", output)
    assert llama_stopped and output.index(f"call {dialer.call_sid} ended") < llama_stopped.start()
    assert exited - ended < 15
