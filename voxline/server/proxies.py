"""Requests through a reverse proxy: whose ``X-Forwarded-*`` headers are believed.

Behind a proxy (nginx, a Kubernetes Ingress, a cloud balancer), the server sees the
proxy's address, not the caller's, and the request's scheme and ``Host`` are the
proxy's too: a webhook Twilio signed for ``https://voice.example.com/twilio/voice``
arrives as ``http://10.0.3.7:8080/twilio/voice``. The proxy says what it saw in
``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Forwarded-Host``; anyone can
send those headers, so :class:`ForwardedHeaders` believes them only from a peer
listed in ``http.trusted_proxies``, and ignores them from any other:

* ``X-Forwarded-For``: the client's address (per-address request limits) is the
  last address in the list that is not itself a trusted proxy;
* ``X-Forwarded-Proto`` (``http``/``https``): the request's scheme;
* ``X-Forwarded-Host``: the request's ``Host``.

The last value of a header is used (the nearest proxy's, when proxies append).
The URL the Twilio signature is checked against, and the media-stream URL given
back in the TwiML, are built from the scheme and host so obtained, unless
``public_url`` is set, which always wins.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.types import ASGIApp, Receive, Scope, Send

HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)
"""A ``Host`` value: a name or an address, with an optional port."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The peers whose forwarded headers are believed.

    Args:
        entries: addresses and networks (``10.0.0.0/8``); ``"*"`` trusts every peer.
    """

    def __init__(self, entries: list[str]):
        self.everyone = "*" in entries
        self.networks: list[Network] = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        ]

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def trusts(self, host: str | None) -> bool:
        """Whether ``host`` (an address as the socket reports it) is a trusted proxy."""
        if self.everyone:
            return True
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, forwarded_for: str) -> str | None:
        """The client's address in an ``X-Forwarded-For`` list: the last one that is not
        a trusted proxy (each proxy appends the address it saw)."""
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = _address(hop)
            if address is not None and not self.trusts(address):
                return address
        return _address(hops[0]) if hops else None  # every hop is a proxy of ours


def _address(hop: str) -> str | None:
    """The address in one ``X-Forwarded-For`` entry (``1.2.3.4``, ``1.2.3.4:5``,
    ``[::1]:5``), or None when it is not an address."""
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else hop
    elif hop.count(":") == 1:
        hop = hop.split(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _last(value: bytes) -> str:
    return value.decode("latin-1").split(",")[-1].strip()


class ForwardedHeaders:
    """ASGI middleware: the forwarded client, scheme and host, from trusted proxies only.

    Args:
        app: the application behind it.
        trusted: the proxies whose headers are believed.
    """

    def __init__(self, app: ASGIApp, *, trusted: TrustedProxies):
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        if not self.trusted or not self.trusted.trusts(peer[0] if peer else None):
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        headers: list[tuple[bytes, bytes]] = []
        forwarded_host = None
        forwarded_for: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                proto = _last(value).lower()
                if proto in ("http", "https"):
                    websocket = scope["type"] == "websocket"
                    scope["scheme"] = proto.replace("http", "ws") if websocket else proto
            elif name == b"x-forwarded-host":
                host = _last(value)
                if HOST.fullmatch(host):
                    forwarded_host = host
            elif name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
            if name != b"host":
                headers.append((name, value))
        if forwarded_host is not None:
            headers.append((b"host", forwarded_host.encode("latin-1")))
        else:
            headers.extend((name, value) for name, value in scope["headers"] if name == b"host")
        scope["headers"] = headers
        if forwarded_for and (client := self.trusted.client(",".join(forwarded_for))):
            scope["client"] = (client, 0)
        await self.app(scope, receive, send)
