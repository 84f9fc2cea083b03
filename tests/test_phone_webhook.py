"""The voice webhook's decisions: signature first, persona by number, busy at capacity
and while draining; and where a media stream is taken when several processes share a balancer."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import BANK_PERSONA
from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.personas import Persona, load_persona
from voxline.server.admission import Admission, CallRejected
from voxline.server.phone import HandshakeRefused, PhoneLine, WebhookRejected
from voxline.transports.twilio_webhook import StreamTokens

URL = "https://voice.example.com/twilio/voice"
TOKEN = "webhook-test-token"


@pytest.fixture
def line(monkeypatch) -> PhoneLine:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    bank = load_persona(BANK_PERSONA)
    other = Persona(name="other", prompt="You take restaurant bookings.")
    return PhoneLine(
        config=ServerConfig(),
        runtime=Runtime(),
        personas={bank.name: bank, other.name: other},
        numbers={"+15550100009": "other"},
        admission=Admission(max_calls=1),
        tokens=StreamTokens(),
    )


def signed(params: dict[str, str]) -> str:
    return RequestValidator(TOKEN).compute_signature(URL, params)


def stream_parameters(twiml: str) -> dict[str, str]:
    stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None
    # The stream URL names the process that answered (a balancer hands it back there).
    url = stream.get("url", "")
    assert url.startswith("wss://voice.example.com/twilio/stream/"), url
    assert len(url.rsplit("/", 1)[1]) == 8
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def test_persona_is_chosen_by_the_called_number(line):
    params = {"CallSid": "CA1", "To": "+15550100009"}
    assert stream_parameters(line.answer_webhook(URL, params, signed(params)))["persona"] == "other"
    line.admission.claim("CA1").release()  # the webhook reserved the only line
    params = {"CallSid": "CA2", "To": "+15550000000"}
    chosen = stream_parameters(line.answer_webhook(URL, params, signed(params)))
    assert chosen["persona"] == "bank_support"  # the default
    assert chosen["token"]


async def test_busy_at_capacity_but_only_for_signed_requests(line):
    params = {"CallSid": "CA3", "To": "+15550000000"}
    async with line.admission.admit():
        twiml = line.answer_webhook(URL, params, signed(params))
        assert ElementTree.fromstring(twiml).find("./Reject").get("reason") == "busy"
        with pytest.raises(WebhookRejected) as refused:
            line.answer_webhook(URL, params, "forged")
        assert refused.value.status == 403
        with pytest.raises(CallRejected, match="busy: 1 of 1"):
            async with line.admission.admit():
                pass
    assert line.admission.refused == 2  # the busy webhook and the refused admit


def test_missing_call_sid_and_missing_auth_token(line, monkeypatch):
    params = {"To": "+15550000000"}
    with pytest.raises(WebhookRejected) as refused:
        line.answer_webhook(URL, params, signed(params))
    assert refused.value.status == 400
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    params = {"CallSid": "CA4"}
    with pytest.raises(WebhookRejected) as refused:
        line.answer_webhook(URL, params, signed(params))
    assert refused.value.status == 403


def test_the_webhook_takes_the_line_it_promises(line):
    """Two webhooks at once, one line: the first reserves it, the second hears busy."""
    first = {"CallSid": "CA5", "To": "+15550000000"}
    second = {"CallSid": "CA6", "To": "+15550000000"}
    assert stream_parameters(line.answer_webhook(URL, first, signed(first)))["token"]
    twiml = line.answer_webhook(URL, second, signed(second))
    assert ElementTree.fromstring(twiml).find("./Reject").get("reason") == "busy"
    assert line.admission.claim("CA5") is not None and line.admission.claim("CA6") is None


def test_a_draining_process_answers_busy_but_its_promised_calls_still_start(line):
    promised = {"CallSid": "CA7", "To": "+15550000000"}
    assert stream_parameters(line.answer_webhook(URL, promised, signed(promised)))["token"]
    line.admission.close()  # the drain began
    line.admission.claim("CA7").release()  # even a free line is not taken now
    late = {"CallSid": "CA8", "To": "+15550000000"}
    twiml = line.answer_webhook(URL, late, signed(late))
    assert ElementTree.fromstring(twiml).find("./Reject").get("reason") == "busy"
    assert line.admission.busy_reason().startswith("draining")


def test_busy_status_503_lets_a_balancer_try_another_process(line):
    line.config = ServerConfig(twilio={"busy_status": 503})
    first = {"CallSid": "CA9", "To": "+15550000000"}
    assert stream_parameters(line.answer_webhook(URL, first, signed(first)))["token"]
    second = {"CallSid": "CA10", "To": "+15550000000"}
    with pytest.raises(WebhookRejected, match="busy: 1 of 1") as refused:
        line.answer_webhook(URL, second, signed(second))
    assert refused.value.status == 503


def test_a_stream_of_another_process_needs_a_free_line_here(line):
    """Its own streams are always let in (their line is reserved); another process's
    take a free line at the handshake, or are handed back with 503."""
    assert line.handshake(line.instance) is None
    assert line.handshake(None) is None  # the plain /twilio/stream: decided at start
    foreign = line.handshake("0badc0de")
    assert foreign is not None and line.admission.full
    with pytest.raises(HandshakeRefused, match="busy: 1 of 1"):
        line.handshake("0badc0de")
    foreign.release()
    line.admission.close()
    with pytest.raises(HandshakeRefused, match="draining"):
        line.handshake("0badc0de")
    assert line.handshake(line.instance) is None  # its own promised calls still come in
