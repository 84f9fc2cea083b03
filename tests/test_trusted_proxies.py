"""X-Forwarded-* headers are believed from the proxies in ``http.trusted_proxies`` only.

The voice webhook's signature is checked against the URL Twilio posted to. Behind a
proxy that terminates TLS the request arrives as plain HTTP for another host; the
proxy's X-Forwarded-Proto and X-Forwarded-Host rebuild the public URL, and so the
stream URL in the TwiML, but only when the peer is a trusted proxy: the same
headers from anyone else are ignored, and the signature then fails.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ElementTree

import httpx
import pytest
from pydantic import ValidationError
from twilio.request_validator import RequestValidator

from tests.conftest import BANK_PERSONA
from voxline.bot.runtime import Runtime
from voxline.config import ServerConfig
from voxline.personas import load_persona
from voxline.server.app import create_app
from voxline.server.proxies import ForwardedHeaders, TrustedProxies

AUTH = "proxy-test-token"
PUBLIC = "https://voice.example.com/twilio/voice"
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "voice.example.com"}


def post_webhook(app, peer: str, headers: dict[str, str]) -> httpx.Response:
    params = {"CallSid": "CA" + peer.replace(".", ""), "To": "+15550000000"}
    signature = RequestValidator(AUTH).compute_signature(PUBLIC, params)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://10.0.3.7:8080") as c:
            return await c.post(
                "/twilio/voice", data=params, headers={"X-Twilio-Signature": signature, **headers}
            )

    return asyncio.run(post())


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH)
    config = ServerConfig(http={"trusted_proxies": ["10.0.0.0/8"]})
    return create_app(config, {BANK_PERSONA: load_persona(BANK_PERSONA)}, Runtime(config))


def test_a_trusted_proxy_gives_the_public_url_the_signature_was_made_for(app):
    response = post_webhook(app, "10.1.2.3", FORWARDED)
    assert response.status_code == 200, response.text
    stream = ElementTree.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url", "").startswith("wss://voice.example.com/twilio/stream/")


def test_the_same_headers_from_an_untrusted_peer_are_ignored(app):
    response = post_webhook(app, "192.0.2.7", FORWARDED)
    assert response.status_code == 403  # checked against http://10.0.3.7:8080/...


def test_without_the_headers_the_request_url_is_used(app):
    assert post_webhook(app, "10.1.2.3", {}).status_code == 403


async def echo(scope, receive, send) -> None:
    host = dict(scope["headers"]).get(b"host", b"").decode()
    body = f"{scope['client'][0]} {scope['scheme']} {host}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def seen(trusted: list[str], peer: str, headers: dict[str, str]) -> str:
    app = ForwardedHeaders(echo, trusted=TrustedProxies(trusted))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://backend:8080") as client:
        return (await client.get("/", headers=headers)).text


async def test_client_address_scheme_and_host_from_trusted_hops_only():
    chain = {"X-Forwarded-For": "203.0.113.9, 198.51.100.4, 10.0.0.2", **FORWARDED}
    # The last address that is not a trusted proxy is the client's.
    assert await seen(["10.0.0.0/8"], "10.0.0.1", chain) == "198.51.100.4 https voice.example.com"
    # Every hop trusted: the first address is the client's.
    assert await seen(["*"], "192.0.2.1", chain) == "203.0.113.9 https voice.example.com"
    assert await seen([], "10.0.0.1", chain) == "10.0.0.1 http backend:8080"
    assert await seen(["127.0.0.1"], "10.0.0.1", chain) == "10.0.0.1 http backend:8080"
    # The nearest proxy's value when proxies append; nonsense is ignored.
    appended = {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "evil.example, a.example"}
    assert await seen(["10.0.0.0/8"], "10.0.0.1", appended) == "10.0.0.1 https a.example"
    bad = {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "a.example/evil?x"}
    assert await seen(["10.0.0.0/8"], "10.0.0.1", bad) == "10.0.0.1 http backend:8080"


def test_trusted_proxies_must_be_addresses_or_networks():
    assert ServerConfig(http={"trusted_proxies": ["10.0.0.0/8", "::1", "*"]})
    assert ServerConfig().http.trusted_proxies == ["127.0.0.1", "::1"]
    with pytest.raises(ValidationError, match="not an IP address or network"):
        ServerConfig(http={"trusted_proxies": ["proxy.internal"]})
