"""WebRTC signaling for the browser widget: the messages, and the checks at the door.

The page POSTs its SDP offer with its widget key and gets the server's answer
(pipecat's SmallWebRTC on aiortc does the WebRTC itself); it may PATCH ICE
candidates later (trickle ICE). Everything a page sends is validated here first:
the body's size and shape, the widget key, the page's ``Origin`` against the
key's allowed origins, and how many offers one address sends per minute.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxline.config import IceServerConfig, WidgetConfig


class SignalingError(Exception):
    """A refused signaling request: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Offer(BaseModel):
    """``POST /webrtc/offer``: the page's SDP offer for a widget key."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    key: str = Field(min_length=1, max_length=64)
    sdp: str = Field(min_length=1)
    type: Literal["offer"]
    pc_id: str | None = Field(default=None, max_length=128)
    restart_pc: bool | None = None

    @field_validator("sdp")
    @classmethod
    def _looks_like_sdp(cls, sdp: str) -> str:
        if not sdp.startswith("v=0") or "\nm=audio " not in sdp.replace("\r\n", "\n"):
            raise ValueError("not an SDP offer with an audio section (it must start with v=0)")
        return sdp


class Candidate(BaseModel):
    """One trickled ICE candidate (an empty ``candidate`` ends the candidates)."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(max_length=1024)
    sdp_mid: str = Field(max_length=32)
    sdp_mline_index: int = Field(ge=0, le=16)


class CandidatePatch(BaseModel):
    """``PATCH /webrtc/offer``: candidates for a connection that already has an answer.

    The widget key is checked as for the offer: a connection takes candidates only
    under the key it was answered for.
    """

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=64)
    pc_id: str = Field(min_length=1, max_length=128)
    candidates: list[Candidate] = Field(max_length=64)


_MDNS_CANDIDATE = re.compile(r"^a=candidate:.* [0-9a-f-]+\.local .*$", re.MULTILINE)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_AUDIO_OVER_DTLS = re.compile(r"^m=audio \d+ UDP/TLS/RTP/SAVPF( \d+)+$", re.MULTILINE)
_FINGERPRINT = re.compile(
    r"^a=fingerprint:sha-(1|224|256|384|512) [0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+$", re.MULTILINE
)
_SETUP = re.compile(r"^a=setup:(.*)$", re.MULTILINE)


def check_sdp(sdp: str) -> None:
    """Refuse an offer a browser would never send, before any WebRTC work is done for it.

    A WebRTC offer carries audio over DTLS-SRTP (``UDP/TLS/RTP/SAVPF``), a DTLS
    certificate fingerprint, ICE credentials and a DTLS role. aiortc answers
    some offers that lack these (the call then never connects, holding a line
    until it times out), and raises bare errors on others: both become a 400
    that names what is missing.

    Raises:
        SignalingError: 400 naming the first problem.
    """
    text = sdp.replace("\r\n", "\n")
    problems = [
        (_CONTROL.search(text) is not None, "contains control characters"),
        (
            _AUDIO_OVER_DTLS.search(text) is None,
            "has no audio section over DTLS-SRTP (m=audio <port> UDP/TLS/RTP/SAVPF <formats>)",
        ),
        (_FINGERPRINT.search(text) is None, "has no DTLS fingerprint (a=fingerprint:sha-256 ...)"),
        (
            "\na=ice-ufrag:" not in text or "\na=ice-pwd:" not in text,
            "has no ICE credentials (a=ice-ufrag, a=ice-pwd)",
        ),
        (
            any(
                role.strip() not in {"actpass", "active", "passive"}
                for role in _SETUP.findall(text)
            ),
            "has an unknown DTLS role (a=setup must be actpass, active or passive)",
        ),
    ]
    for failed, problem in problems:
        if failed:
            raise SignalingError(400, f"malformed SDP: the offer {problem}")


def strip_mdns_candidates(sdp: str) -> str:
    """Remove ``.local`` (mDNS) candidates: resolving them would send multicast queries."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    kept = [line for line in lines if not _MDNS_CANDIDATE.match(line)]
    return "\r\n".join(kept)


def is_mdns_candidate(candidate: str) -> bool:
    """Whether a trickled candidate names an mDNS host."""
    return bool(re.search(r" [0-9a-f-]+\.local ", candidate))


def check_origin(
    widget: WidgetConfig, origin: str | None, own_origin: str, *, require_origin: bool = True
) -> str | None:
    """The origin to allow in CORS headers, or raise when the caller may not call.

    A browser always sends ``Origin`` with a POST or PATCH. A request without one
    (or with ``null``: a sandboxed frame or a local file) comes from something
    that is not a web page of any site; only keys that set
    ``allow_non_browser_clients`` take those. A key with no allowed origins
    serves only pages of this server; ``*`` allows any site.

    ``require_origin=False`` is for ``GET`` requests, which a browser sends
    without ``Origin`` when the page is the server's own.

    Raises:
        SignalingError: 403 for a page of another site, or a client without an origin.
    """
    if origin is None or origin == "null":
        if widget.allow_non_browser_clients or not require_origin:
            return None
        raise SignalingError(
            403, "this widget key takes calls from web pages only (no Origin header)"
        )
    allowed = widget.allowed_origins or [own_origin]
    if "*" in allowed or origin in allowed:
        return origin
    raise SignalingError(403, f"origin {origin} may not use this widget key")


def ice_servers_for_page(servers: list[IceServerConfig]) -> list[dict]:
    """The ICE servers in the form ``RTCPeerConnection`` takes."""
    page = []
    for server in servers:
        entry: dict = {"urls": server.urls}
        if server.username is not None:
            entry["username"] = server.username
        if server.credential is not None:
            entry["credential"] = server.credential
        page.append(entry)
    return page
