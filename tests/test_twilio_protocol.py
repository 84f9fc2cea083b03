"""Twilio Media Streams protocol: parsing every event and every edge, tokens, TwiML, mark gate."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ElementTree
from collections import deque

import pytest
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    InputDTMFFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    OutputAudioRawFrame,
    TTSTextFrame,
    UserSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.utils.asyncio.task_manager import TaskManager
from twilio.request_validator import RequestValidator

from tests.fake_clock import FakeClock
from voxline.transports.twilio import (
    InboundBudget,
    TwilioMediaSerializer,
    TwilioStream,
)
from voxline.transports.twilio_output import MarkGate
from voxline.transports.twilio_protocol import (
    DTMF,
    Connected,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from voxline.transports.twilio_webhook import (
    StreamTokenError,
    StreamTokens,
    connect_twiml,
    dial_twiml,
    signature_is_valid,
)

SID = "MZ00000000000000000000000000000000"


def media(payload: str) -> str:
    return json.dumps({"event": "media", "streamSid": SID, "media": {"payload": payload}})


def test_every_inbound_event_parses():
    start = {
        "event": "start",
        "start": {
            "streamSid": SID, "callSid": "CA1", "accountSid": "AC1",
            "customParameters": {"persona": "bank", "token": "t"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }  # fmt: skip
    assert isinstance(parse_message('{"event": "connected", "protocol": "Call"}'), Connected)
    parsed = parse_message(json.dumps(start))
    assert isinstance(parsed, Start)
    assert parsed.start.custom_parameters == {"persona": "bank", "token": "t"}
    assert parsed.start.media_format.sample_rate == 8000
    message = parse_message(media(base64.b64encode(b"\xff" * 160).decode()))
    assert isinstance(message, Media) and message.audio() == b"\xff" * 160
    dtmf = parse_message(json.dumps({"event": "dtmf", "dtmf": {"digit": "#"}}))
    assert isinstance(dtmf, DTMF) and dtmf.dtmf.digit == "#"
    mark = parse_message(json.dumps({"event": "mark", "mark": {"name": "chunk-1"}}))
    assert isinstance(mark, Mark) and mark.mark.name == "chunk-1"
    assert isinstance(parse_message('{"event": "stop", "streamSid": "MZ"}'), Stop)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\x01binary", "binary frame"),
        ("not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"event": "bogus"}', "unknown event 'bogus'"),
        ('{"no": "event"}', "unknown event None"),
        ('{"event": "media"}', "media message"),
        ('{"event": "start", "start": {"streamSid": "MZ"}}', "callSid"),
        ('{"event": "dtmf", "dtmf": {"digit": "x"}}', "digit"),
        ('{"event": "mark", "mark": {}}', "name"),
    ],
)
def test_malformed_messages_are_protocol_errors(raw, reason):
    with pytest.raises(ProtocolError, match=reason.replace("(", r"\(")):
        parse_message(raw)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("@@not base64@@", "not valid base64"),
        (base64.b64encode(bytes(65536)).decode(), "65536 bytes"),
    ],
)
def test_bad_media_payloads(payload, reason):
    message = parse_message(media(payload))
    assert isinstance(message, Media)
    with pytest.raises(ProtocolError, match=reason):
        message.audio()


def test_odd_length_payload_is_valid_mulaw():
    message = parse_message(media(base64.b64encode(b"\x7f" * 161).decode()))
    assert isinstance(message, Media) and len(message.audio()) == 161


def test_outbound_messages_match_twilio_format():
    payload = base64.b64encode(b"\xff\x7f").decode()
    assert json.loads(media_message(SID, b"\xff\x7f")) == {
        "event": "media", "streamSid": SID, "media": {"payload": payload},
    }  # fmt: skip
    assert json.loads(mark_message(SID, "m1")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "m1"},
    }
    assert json.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_connect_twiml_carries_parameters():
    root = ElementTree.fromstring(
        connect_twiml("wss://h/twilio/stream", {"persona": "a", "token": "t"})
    )
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://h/twilio/stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"persona": "a", "token": "t"}


def test_dial_twiml():
    root = ElementTree.fromstring(dial_twiml("+15551234567"))
    dial = root.find("./Dial")
    assert dial is not None and dial.text == "+15551234567"


def test_signature_validation():
    url, params = "https://voice.example.com/twilio/voice", {"CallSid": "CA1", "To": "+1555"}
    good = RequestValidator("secret").compute_signature(url, params)
    assert signature_is_valid("secret", url, params, good)
    assert not signature_is_valid("secret", url, params, "")
    assert not signature_is_valid("secret", url, params, good[:-2] + "xx")
    assert not signature_is_valid("other", url, params, good)
    assert not signature_is_valid("secret", url + "?x=1", params, good)
    assert not signature_is_valid("", url, params, good)


def test_stream_tokens_are_single_use_and_expire():
    tokens = StreamTokens(secret=b"k" * 32, ttl_secs=60)
    token = tokens.issue("bank", "CA1", now=1000.0)
    with pytest.raises(StreamTokenError, match="does not match"):
        tokens.redeem(token, "bank", "CA2", now=1001.0)
    with pytest.raises(StreamTokenError, match="does not match"):
        tokens.redeem(token, "other", "CA1", now=1001.0)
    with pytest.raises(StreamTokenError, match="malformed"):
        tokens.redeem("garbage", "bank", "CA1", now=1001.0)
    tokens.redeem(token, "bank", "CA1", now=1001.0)
    with pytest.raises(StreamTokenError, match="already used"):
        tokens.redeem(token, "bank", "CA1", now=1002.0)
    late = tokens.issue("bank", "CA3", now=1000.0)
    with pytest.raises(StreamTokenError, match="expired"):
        tokens.redeem(late, "bank", "CA3", now=1061.0)


async def test_mark_gate_releases_text_only_once_played():
    sent, released = [], []

    async def send_mark(name: str) -> None:
        sent.append(name)

    async def release(frame) -> None:
        released.append(frame)

    gate = MarkGate(send_mark)
    gate.bind(release)
    first, second, end = (
        TTSTextFrame("Your balance is", text_type="sentence"),
        TTSTextFrame("forty two dollars.", text_type="sentence"),
        LLMFullResponseEndFrame(),
    )
    assert await gate.admit(first) and await gate.admit(second) and await gate.admit(end)
    assert not await gate.admit(UserSpeakingFrame())  # system frames never wait
    assert sent == ["chunk-1", "chunk-2"] and released == []
    await gate.on_mark("chunk-1")
    assert released == [first]
    await gate.interrupt()  # chunk-2 was never confirmed: its text is dropped, order kept
    assert released == [first, end]
    assert gate.heard == ["Your balance is"]
    await gate.on_mark("chunk-2")  # Twilio echoes cleared marks too: ignored
    assert released == [first, end]


async def test_clear_goes_out_only_while_twilio_may_hold_unplayed_audio():
    """A barge-in that falls between two chunks (the first played out, its mark echoed,
    the next not yet written) has nothing to clear; one during a chunk clears it."""
    stream = TwilioStream(stream_sid=SID, call_sid="CA1")
    serializer = TwilioMediaSerializer(stream)
    setup = FrameProcessorSetup(
        clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None
    )
    await serializer.setup(setup)

    async def send_mark(name: str) -> None:
        pass

    async def release(frame) -> None:
        pass

    gate = MarkGate(send_mark, on_drained=lambda: setattr(stream, "audio_outstanding", False))
    gate.bind(release)
    assert await serializer.serialize(InterruptionFrame()) is None  # nothing sent yet

    audio = OutputAudioRawFrame(audio=bytes(960), sample_rate=8000, num_channels=1)
    assert json.loads(await serializer.serialize(audio))["event"] == "media"
    assert await gate.admit(TTSTextFrame("Our branches open", text_type="sentence"))
    await gate.on_mark("chunk-1")  # Twilio played the whole chunk
    assert await serializer.serialize(InterruptionFrame()) is None

    assert json.loads(await serializer.serialize(audio))["event"] == "media"
    assert await gate.admit(TTSTextFrame("at nine.", text_type="sentence"))
    assert json.loads(await serializer.serialize(InterruptionFrame())) == {
        "event": "clear",
        "streamSid": SID,
    }
    assert await serializer.serialize(InterruptionFrame()) is None  # cleared once


@pytest.fixture
def rest_standin(tmp_path):
    from tests.servers import start_rest_standin

    log = tmp_path / "rest.jsonl"
    server, url = start_rest_standin(log)
    yield url, log
    server.stop()


async def test_transfer_call_redirects_the_live_call_with_dial(rest_standin):
    from voxline.bot.phone_control import TwilioCallControl
    from voxline.transports.twilio import TwilioStream
    from voxline.transports.twilio_webhook import TwilioRestClient

    url, log = rest_standin
    account = "AC" + "2" * 32
    control = TwilioCallControl(
        stream=TwilioStream(stream_sid="MZ1", call_sid="CA42"),
        gate=MarkGate(lambda name: None),
        rest=TwilioRestClient(account, "token", url),
        goodbye="Goodbye.",
    )
    await control.transfer_call("+15551234567")
    [record] = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["call"] == "CA42" and record["account"] == account and record["user"] == account
    dial = ElementTree.fromstring(record["form"]["Twiml"]).find("./Dial")
    assert dial is not None and dial.text == "+15551234567"


async def test_transfer_without_credentials_is_a_clear_error():
    from voxline.bot.phone_control import TwilioCallControl
    from voxline.transports.twilio import TwilioStream

    control = TwilioCallControl(
        stream=TwilioStream(stream_sid="MZ1", call_sid="CA42"),
        gate=MarkGate(lambda name: None),
        rest=None,
        goodbye="Goodbye.",
    )
    with pytest.raises(RuntimeError, match="TWILIO_ACCOUNT_SID"):
        await control.transfer_call("+15551234567")
    with pytest.raises(RuntimeError, match="not supported"):
        await control.send_dtmf("1")


async def test_keypad_keys_a_to_d_are_dropped_and_the_stream_goes_on():
    """Twilio reports A-D; pipecat's keypad knows only 0-9, * and #: the key is logged, dropped."""
    stream = TwilioStream(stream_sid=SID, call_sid="CA1")
    serializer = TwilioMediaSerializer(stream)
    for digit in "ABCD":
        message = json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": digit}})
        assert await serializer.deserialize(message) is None
    assert [reason.split(" (")[0] for reason in stream.dropped] == [
        f"keypad key {digit} ignored" for digit in "ABCD"
    ]
    pressed = await serializer.deserialize(
        json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "7"}})
    )
    assert isinstance(pressed, InputDTMFFrame) and pressed.button.value == "7"


async def test_a_second_start_is_dropped_with_a_reason():
    stream = TwilioStream(stream_sid=SID, call_sid="CA1")
    start = {"streamSid": SID, "callSid": "CA2", "customParameters": {}}
    again = json.dumps({"event": "start", "streamSid": SID, "start": start})
    assert await TwilioMediaSerializer(stream).deserialize(again) is None
    assert stream.dropped == deque(["a second start message in the same stream, ignored"])


def test_inbound_budget_allows_twilio_pace_and_a_backlog_but_not_a_flood():
    clock = FakeClock()
    budget = InboundBudget(clock)
    # Ten minutes at Twilio's pace, with a mark echo every second: never refused.
    for frame in range(30_000):
        clock.now += 0.02
        assert budget.message() is None and budget.audio(160) is None
        if frame % 50 == 0:
            assert budget.message() is None
    # A 4 s network stall, then its backlog at once: still fine.
    clock.now += 4.0
    for _ in range(200):
        assert budget.message() is None and budget.audio(160) is None
    # 1000 frames a second: refused within half a second.
    refusals = []
    for _ in range(500):
        clock.now += 0.001
        refusals.append(budget.message() or budget.audio(160))
    first = next(i for i, reason in enumerate(refusals) if reason)
    assert first < 500, refusals[-1]
    assert "a second" in refusals[first] or "faster than real time" in refusals[first]


async def test_a_flooding_stream_is_reported_once_and_then_ignored():
    clock = FakeClock()
    stream = TwilioStream(stream_sid=SID, call_sid="CA1", budget=InboundBudget(clock))
    reasons: list[str] = []

    async def on_violation(reason: str) -> None:
        reasons.append(reason)

    stream.on_violation = on_violation
    serializer = TwilioMediaSerializer(stream)
    frame = media(base64.b64encode(b"\xff" * 160).decode())
    pushed = 0
    for _ in range(1000):
        clock.now += 0.001
        pushed += await serializer.deserialize(frame) is not None
    assert len(reasons) == 1 and stream.violated == reasons[0]
    assert pushed < 400  # everything after the violation is dropped
