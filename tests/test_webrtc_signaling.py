"""WebRTC signaling against a real voxline server: what a page may send, and every refusal.

Offers come from aiortc in the test (a real WebRTC peer, no browser needed here). Requests
that must not share a rate budget come from other loopback addresses (127.0.0.x)."""

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
from voxline.transports.dial_result import DialError
from voxline.transports.twilio_caller import TwilioCaller

SHOP = "https://shop.example.com"
SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
AUTH_TOKEN = "signaling-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("webrtc")
    config = tmp / "voxline.yaml"
    port = free_port()
    config.write_text(
        textwrap.dedent(
            f"""\
            default_persona: {BANK_PERSONA}
            max_calls: 1
            engines:
              llm: {{backend: llama_cpp}}  # signaling, not the LLM, is under test here
            public_url: http://127.0.0.1:{port}
            twilio: {{stream_token_ttl_secs: 3}}
            widgets:
              demo: {{}}
              shop: {{allowed_origins: ["{SHOP}"]}}
              kiosk: {{allow_non_browser_clients: true}}
            webrtc:
              max_sdp_bytes: 8192
              offers_per_minute_per_ip: 6
              candidate_patches_per_minute_per_ip: 10
              ice_servers: [{{urls: "stun:stun.example.com:3478"}}]
            http:
              max_body_bytes: 4096
              requests_per_minute_per_ip: 200
            """
        )
    )
    env = {
        **os.environ,
        "VOXLINE_OFFLINE": "1",
        "VOXLINE_LOG_LEVEL": "INFO",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    }
    process: ServerProcess = start_voxline(config, env, port)
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "own": url, "process": process}
    process.stop()
    assert "Traceback" not in process.output, process.output[-4000:]


async def real_offer() -> tuple[RTCPeerConnection, str]:
    peer = RTCPeerConnection()
    peer.addTransceiver("audio", direction="sendrecv")
    peer.createDataChannel("voxline")
    await peer.setLocalDescription(await peer.createOffer())
    return peer, peer.localDescription.sdp


def post(url: str, body, origin: str | None = None, source: str = "127.0.0.1") -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(url + "/webrtc/offer", content=data, headers=headers)


def test_the_demo_page_and_the_widget_are_served(server):
    page = httpx.get(server["url"] + "/", timeout=10)
    assert page.status_code == 200 and 'src="/widget.js" data-key="demo"' in page.text
    script = httpx.get(server["url"] + "/widget.js", timeout=10)
    assert script.headers["content-type"].startswith("application/javascript")
    assert "RTCPeerConnection" in script.text and "aria-label" in script.text
    config = httpx.get(server["url"] + "/webrtc/config?key=shop", headers={"Origin": SHOP})
    assert config.json() == {"ice_servers": [{"urls": "stun:stun.example.com:3478"}]}
    assert config.headers["access-control-allow-origin"] == SHOP
    # The demo page's own GET carries no Origin (browsers send none for same-origin GETs).
    own_page = httpx.get(server["url"] + "/webrtc/config?key=demo", timeout=10)
    assert own_page.status_code == 200, own_page.text


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
    offer = {"key": "demo", "type": "offer", "sdp": garbage}
    response = post(server["url"], offer, origin=server["own"])
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
            # The answered offer holds the only line: no waiting for its call to start.
            second = {"key": "demo", "type": "offer", "sdp": second_sdp}
            busy = post(server["url"], second, origin=server["own"])
            assert busy.status_code == 503 and "busy" in busy.json()["error"]
            # A made-up pc_id is a new call, not a way past the busy check.
            made_up = post(server["url"], {**second, "pc_id": "made-up"}, origin=server["own"])
            assert made_up.status_code == 503, made_up.text
            # Renegotiating the live call's own connection needs no new line, but only
            # under its own key.
            other_key = post(
                server["url"], {**second, "pc_id": answer["pc_id"]}, origin=server["own"]
            )
            assert other_key.status_code == 404, other_key.text
            candidate = {
                "candidate": "candidate:1 1 UDP 2122252543 192.0.2.9 50000 typ host",
                "sdp_mid": "0",
                "sdp_mline_index": 0,
            }
            refusals = {
                "no key": ({"pc_id": answer["pc_id"], "candidates": [candidate]}, SHOP),
                "another key's connection": (
                    {"key": "demo", "pc_id": answer["pc_id"], "candidates": [candidate]},
                    server["own"],
                ),
                "no origin": (
                    {"key": "shop", "pc_id": answer["pc_id"], "candidates": [candidate]},
                    None,
                ),
                "another site": (
                    {"key": "shop", "pc_id": answer["pc_id"], "candidates": [candidate]},
                    "https://evil.example",
                ),
            }
            statuses = {}
            for name, (body, origin) in refusals.items():
                headers = {"Origin": origin} if origin else {}
                refused = httpx.patch(
                    server["url"] + "/webrtc/offer", json=body, headers=headers, timeout=10
                )
                statuses[name] = (refused.status_code, refused.json()["error"])
            assert statuses["no key"][0] == 400 and "key" in statuses["no key"][1], statuses
            assert statuses["another key's connection"][0] == 404, statuses
            assert statuses["no origin"][0] == 403, statuses
            assert statuses["another site"][0] == 403, statuses
            trickle = httpx.patch(
                server["url"] + "/webrtc/offer",
                headers={"Origin": SHOP},
                json={
                    "key": "shop",
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
                headers={"Origin": SHOP},
                json={"key": "shop", "pc_id": "nope", "candidates": []},
                timeout=10,
            )
            assert unknown.status_code == 404
        finally:
            await first_peer.close()
            await second_peer.close()

    asyncio.run(scenario())
    wait_idle(server)


def wait_idle(server: dict, timeout: float = 40.0) -> None:
    """Wait until no line is in use (a closed peer's call ends within seconds)."""

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while (await client.get(server["url"] + "/health/ready")).json()["calls"]:
                await asyncio.sleep(0.5)

    asyncio.run(asyncio.wait_for(poll(), timeout))


def client_from(address: str) -> httpx.AsyncClient:
    """An HTTP client whose requests come from ``address`` (another loopback address)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=30)


def test_offers_without_an_origin_are_refused_unless_the_key_allows_them(server):
    sdp = "v=0\r\nm=audio 9 x\r\n"
    scripted = post(server["url"], {"key": "demo", "type": "offer", "sdp": sdp})
    assert scripted.status_code == 403, scripted.text
    assert "web pages only" in scripted.json()["error"]
    null = post(server["url"], {"key": "demo", "type": "offer", "sdp": sdp}, origin="null")
    assert null.status_code == 403, null.text
    # A key for non-browser clients takes it: this offer gets as far as the SDP parser.
    kiosk = post(server["url"], {"key": "kiosk", "type": "offer", "sdp": sdp}, source="127.0.0.7")
    assert kiosk.status_code == 400 and "SDP" in kiosk.json()["error"], kiosk.text


def test_concurrent_offers_take_one_line(server):
    """Offers that arrive together for the last line: exactly one is answered."""
    wait_idle(server)

    async def scenario() -> list[int]:
        peers = [await real_offer() for _ in range(4)]
        try:

            async def offer(i: int, sdp: str) -> int:
                async with client_from(f"127.0.0.{20 + i}") as client:
                    response = await client.post(
                        server["url"] + "/webrtc/offer",
                        json={"key": "demo", "type": "offer", "sdp": sdp},
                        headers={"Origin": server["own"]},
                    )
                return response.status_code

            return await asyncio.gather(*(offer(i, sdp) for i, (_, sdp) in enumerate(peers)))
        finally:
            for peer, _ in peers:
                await peer.close()

    statuses = asyncio.run(scenario())
    assert sorted(statuses) == [200, 503, 503, 503], statuses
    wait_idle(server)


def test_a_phone_call_and_a_browser_call_at_once_take_one_line(server):
    """Webhooks and offers racing for the last line: exactly one of them gets it."""
    wait_idle(server)

    async def scenario() -> list[str]:
        peers = [await real_offer() for _ in range(2)]

        async def offer(i: int, sdp: str) -> str:
            async with client_from(f"127.0.0.{30 + i}") as client:
                response = await client.post(
                    server["url"] + "/webrtc/offer",
                    json={"key": "demo", "type": "offer", "sdp": sdp},
                    headers={"Origin": server["own"]},
                )
            return "answered" if response.status_code == 200 else str(response.status_code)

        async def webhook() -> str:
            try:
                await TwilioCaller(server["url"], auth_token=AUTH_TOKEN).request_stream()
            except DialError as exc:
                return "busy" if "Reject" in str(exc) else str(exc)
            return "answered"

        try:
            return await asyncio.gather(
                *(offer(i, sdp) for i, (_, sdp) in enumerate(peers)),
                *(webhook() for _ in range(3)),
            )
        finally:
            for peer, _ in peers:
                await peer.close()

    outcomes = asyncio.run(scenario())
    assert outcomes.count("answered") == 1, outcomes
    assert set(outcomes) == {"answered", "busy", "503"} or set(outcomes) <= {"answered", "busy"}
    # A webhook's line waits for its stream for the token's lifetime (3 s here), then lapses.
    wait_idle(server)


def test_every_route_bounds_its_body(server):
    big_form = {"CallSid": "CA1", "Junk": "x" * 8000}
    webhook = httpx.post(server["url"] + "/twilio/voice", data=big_form, timeout=10)
    assert webhook.status_code == 413, webhook.text
    assert "larger than 4096 bytes" in webhook.json()["error"]

    def chunks():
        for _ in range(20):
            yield b"x" * 1000

    streamed = httpx.post(server["url"] + "/webrtc/offer", content=chunks(), timeout=10)
    assert streamed.status_code == 413, streamed.text
    health = httpx.request("GET", server["url"] + "/health/live", content=b"x" * 5000)
    assert health.status_code == 413
    assert httpx.get(server["url"] + "/health/live", timeout=5).status_code == 200


def test_a_request_flood_from_one_address_is_limited_on_every_route(server):
    async def flood() -> list[httpx.Response]:
        async with client_from("127.0.0.9") as client:
            return [await client.get(server["url"] + "/health/live") for _ in range(230)]

    responses = asyncio.run(flood())
    statuses = [response.status_code for response in responses]
    assert statuses[:150] == [200] * 150, statuses
    limited = [response for response in responses if response.status_code == 429]
    assert limited, statuses
    assert "too many requests" in limited[0].json()["error"]
    assert int(limited[0].headers["retry-after"]) >= 1
    # Other addresses are not affected.
    assert httpx.get(server["url"] + "/health/live", timeout=5).status_code == 200


def test_a_candidate_flood_from_one_address_is_limited(server):
    async def flood() -> list[int]:
        async with client_from("127.0.0.8") as client:
            body = {"key": "kiosk", "pc_id": "nope", "candidates": []}
            return [
                (await client.patch(server["url"] + "/webrtc/offer", json=body)).status_code
                for _ in range(15)
            ]

    statuses = asyncio.run(flood())
    assert statuses[:10] == [404] * 10 and statuses[10:] == [429] * 5, statuses


def test_an_offer_flood_from_one_address_is_limited(server):
    sdp = "v=0\r\nm=audio 9 x\r\n"
    offer = {"key": "demo", "type": "offer", "sdp": sdp}
    statuses = [post(server["url"], offer, origin=server["own"]).status_code for _ in range(12)]
    assert 429 in statuses, statuses
    limited = post(server["url"], offer, origin=server["own"])
    assert limited.status_code == 429 and "too many offers" in limited.json()["error"]
