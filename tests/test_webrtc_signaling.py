"""WebRTC signaling against a real voxline server: what a page may send, and every refusal.

Offers come from aiortc in the test (a real WebRTC peer, no browser needed here)."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import Iterator

import httpx
import pytest
from aiortc import RTCPeerConnection
from conftest import BANK_PERSONA
from servers import ServerProcess, start_voxline

from voxline.engines.llm import free_port

SHOP = "https://shop.example.com"
SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("webrtc")
    config = tmp / "voxline.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            default_persona: {BANK_PERSONA}
            max_calls: 1
            engines:
              llm: {{backend: llama_cpp}}  # signaling, not the LLM, is under test here
            widgets:
              demo: {{}}
              shop: {{allowed_origins: ["{SHOP}"]}}
            webrtc:
              max_sdp_bytes: 8192
              offers_per_minute_per_ip: 6
              ice_servers: [{{urls: "stun:stun.example.com:3478"}}]
            """
        )
    )
    port = free_port()
    env = {**os.environ, "VOXLINE_OFFLINE": "1", "VOXLINE_LOG_LEVEL": "INFO"}
    process: ServerProcess = start_voxline(config, env, port)
    yield {"url": f"http://127.0.0.1:{port}", "process": process}
    process.stop()


async def real_offer() -> tuple[RTCPeerConnection, str]:
    peer = RTCPeerConnection()
    peer.addTransceiver("audio", direction="sendrecv")
    peer.createDataChannel("voxline")
    await peer.setLocalDescription(await peer.createOffer())
    return peer, peer.localDescription.sdp


def post(url: str, body, origin: str | None = None) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + "/webrtc/offer", content=data, headers=headers, timeout=30)


def test_the_demo_page_and_the_widget_are_served(server):
    page = httpx.get(server["url"] + "/", timeout=10)
    assert page.status_code == 200 and 'src="/widget.js" data-key="demo"' in page.text
    script = httpx.get(server["url"] + "/widget.js", timeout=10)
    assert script.headers["content-type"].startswith("application/javascript")
    assert "RTCPeerConnection" in script.text and "aria-label" in script.text
    config = httpx.get(server["url"] + "/webrtc/config?key=shop", headers={"Origin": SHOP})
    assert config.json() == {"ice_servers": [{"urls": "stun:stun.example.com:3478"}]}
    assert config.headers["access-control-allow-origin"] == SHOP


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "the body is not JSON"),
        ({"key": "demo", "type": "offer"}, 400, "sdp: Field required"),
        ({"key": "demo", "type": "answer", "sdp": SDP}, 400, "type: Input should be 'offer'"),
        ({"key": "demo", "type": "offer", "sdp": "hello"}, 400, "not an SDP offer"),
        (
            {"key": "nope", "type": "offer", "sdp": "v=0\r\nm=audio 9 x\r\n"},
            404,
            "unknown widget key",
        ),
        (
            {"key": "demo", "type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 3000},
            413,
            "larger than 8192",
        ),
    ],
)
def test_bad_offers_are_refused_with_a_reason(server, body, status, message):
    response = post(server["url"], body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_malformed_sdp_is_refused_without_harm(server):
    garbage = (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=nonsense\r\n"
    )
    response = post(server["url"], {"key": "demo", "type": "offer", "sdp": garbage})
    assert response.status_code == 400, response.text
    assert httpx.get(server["url"] + "/health/live", timeout=5).status_code == 200


def test_origins_are_checked_per_key(server):
    sdp = "v=0\r\nm=audio 9 x\r\n"
    evil = post(
        server["url"], {"key": "shop", "type": "offer", "sdp": sdp}, origin="https://evil.example"
    )
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    own = post(server["url"], {"key": "demo", "type": "offer", "sdp": sdp}, origin=SHOP)
    assert own.status_code == 403, "the demo key serves only the server's own pages"
    preflight = httpx.options(server["url"] + "/webrtc/offer", headers={"Origin": SHOP})
    assert preflight.headers["access-control-allow-origin"] == SHOP


def test_a_real_offer_is_answered_then_a_second_call_is_busy(server):
    async def scenario():
        first_peer, first_sdp = await real_offer()
        second_peer, second_sdp = await real_offer()
        try:
            first = post(server["url"], {"key": "shop", "type": "offer", "sdp": first_sdp}, SHOP)
            assert first.status_code == 200, first.text
            answer = first.json()
            assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")
            assert first.headers["access-control-allow-origin"] == SHOP
            await asyncio.sleep(0.5)  # the call task takes its admission slot
            busy = post(server["url"], {"key": "demo", "type": "offer", "sdp": second_sdp})
            assert busy.status_code == 503 and "busy" in busy.json()["error"]
            trickle = httpx.patch(
                server["url"] + "/webrtc/offer",
                json={
                    "pc_id": answer["pc_id"],
                    "candidates": [
                        {"candidate": "candidate:1 1 UDP 2122252543 192.0.2.9 50000 typ host",
                         "sdp_mid": "0", "sdp_mline_index": 0},
                        {"candidate": "candidate:2 1 UDP 2122252543 4c1d-9a.local 50001 typ host",
                         "sdp_mid": "0", "sdp_mline_index": 0},
                    ],
                },
                timeout=10,
            )  # fmt: skip
            assert trickle.status_code == 200, trickle.text
            unknown = httpx.patch(
                server["url"] + "/webrtc/offer",
                json={"pc_id": "nope", "candidates": []},
                timeout=10,
            )
            assert unknown.status_code == 404
        finally:
            await first_peer.close()
            await second_peer.close()

    asyncio.run(scenario())


def test_an_offer_flood_from_one_address_is_limited(server):
    sdp = "v=0\r\nm=audio 9 x\r\n"
    statuses = [
        post(server["url"], {"key": "demo", "type": "offer", "sdp": sdp}).status_code
        for _ in range(12)
    ]
    assert 429 in statuses, statuses
    limited = post(server["url"], {"key": "demo", "type": "offer", "sdp": sdp})
    assert limited.status_code == 429 and "too many offers" in limited.json()["error"]
