"""WebRTC signaling for the browser widget: the messages, and the checks at the door.

The page POSTs its SDP offer with its widget key and gets the server's answer
(pipecat's SmallWebRTC on aiortc does the WebRTC itself); it may PATCH ICE
candidates later (trickle ICE). Everything a page sends is validated here first:
the body's size and shape, the widget key, the page's ``Origin`` against the
key's allowed origins, and how many offers one address sends per minute.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
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
    """``PATCH /webrtc/offer``: candidates for a connection that already has an answer."""

    model_config = ConfigDict(extra="forbid")

    pc_id: str = Field(min_length=1, max_length=128)
    candidates: list[Candidate] = Field(max_length=64)


_MDNS_CANDIDATE = re.compile(r"^a=candidate:.* [0-9a-f-]+\.local .*$", re.MULTILINE)


def strip_mdns_candidates(sdp: str) -> str:
    """Remove ``.local`` (mDNS) candidates: resolving them would send multicast queries."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    kept = [line for line in lines if not _MDNS_CANDIDATE.match(line)]
    return "\r\n".join(kept)


def is_mdns_candidate(candidate: str) -> bool:
    """Whether a trickled candidate names an mDNS host."""
    return bool(re.search(r" [0-9a-f-]+\.local ", candidate))


def check_origin(widget: WidgetConfig, origin: str | None, own_origin: str) -> str | None:
    """The origin to allow in CORS headers, or raise when the page may not call.

    A key with no allowed origins serves only pages of this server; ``*`` allows any.

    Raises:
        SignalingError: 403 for a page of another site.
    """
    if origin is None or origin == "null":
        # Not a browser page (a script or a test): nothing to protect with CORS.
        return None
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


class RateLimiter:
    """At most ``limit`` events per address per ``window_secs``; remembers ``max_keys`` addresses.

    Bounded: the least recently seen addresses are forgotten first.
    """

    def __init__(self, limit: int, window_secs: float = 60.0, max_keys: int = 10_000):
        self.limit = limit
        self.window_secs = window_secs
        self.max_keys = max_keys
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str, now: float | None = None) -> bool:
        """Record one event for ``address``; False when it is over the limit."""
        now = time.monotonic() if now is None else now
        times = self._seen.pop(address, None) or deque()
        while times and now - times[0] >= self.window_secs:
            times.popleft()
        allowed = len(times) < self.limit
        if allowed:
            times.append(now)
        self._seen[address] = times
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return allowed
