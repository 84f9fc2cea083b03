"""Who may see the dashboard: the holder of ``VOXLINE_ADMIN_TOKEN``.

* The environment variable unset (or empty): the dashboard is off, every route
  under ``/dashboard`` answers 404.
* Set but shorter than :data:`MIN_TOKEN_CHARS`: off as well, with a warning, so a
  guessable token never guards callers' transcripts.
* Set: the JSON API takes ``Authorization: Bearer <token>``; a browser signs in
  once with a form (``POST /dashboard/login``), which sets a session cookie.

The cookie never holds the token itself: it is ``<expiry>.<HMAC-SHA256(token,
expiry)>``, valid for :data:`SESSION_SECS`, ``HttpOnly``, ``SameSite=Strict``,
limited to ``/dashboard`` and ``Secure`` over HTTPS. Changing the token ends
every session. Tokens and signatures are compared in constant time, and wrong
tokens are limited per client address (:data:`FAILURES_PER_MINUTE`). The token
is never accepted in a URL (it would end up in proxies' logs and the history).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable

from fastapi import Request

from voxline.transports.rate_limit import RateLimiter

TOKEN_VARIABLE = "VOXLINE_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16
SESSION_SECS = 12 * 3600
COOKIE = "voxline_dashboard"
COOKIE_PATH = "/dashboard"
FAILURES_PER_MINUTE = 10


def _digest(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


class AdminAuth:
    """Checks bearer tokens and session cookies against ``VOXLINE_ADMIN_TOKEN``.

    Args:
        token: the admin token; None reads ``VOXLINE_ADMIN_TOKEN`` from the environment.
        clock: wall-clock seconds (tests pass their own).
    """

    def __init__(self, token: str | None = None, clock: Callable[[], float] = time.time):
        token = os.environ.get(TOKEN_VARIABLE, "") if token is None else token
        self.problem: str | None = None
        """Why the dashboard is off, or None when it is on."""
        if not token:
            self.problem = f"{TOKEN_VARIABLE} is not set"
        elif len(token) < MIN_TOKEN_CHARS:
            self.problem = f"{TOKEN_VARIABLE} is shorter than {MIN_TOKEN_CHARS} characters"
        self._token = token if self.problem is None else ""
        self._clock = clock
        self._failures = RateLimiter(FAILURES_PER_MINUTE)

    @property
    def enabled(self) -> bool:
        """Whether the dashboard is served at all."""
        return self.problem is None

    def token_matches(self, candidate: str) -> bool:
        """``candidate`` is the admin token (constant time; never true when disabled)."""
        if not self.enabled:
            return False
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def may_try(self, address: str) -> bool:
        """Whether ``address`` may try another token now (wrong ones are rate-limited)."""
        return self._failures.retry_after(address) == 0.0

    def failed(self, address: str) -> None:
        """Count a wrong token from ``address``."""
        self._failures.allow(address)

    def session_cookie(self) -> str:
        """A new session cookie value: ``<expiry>.<signature>``."""
        expiry = int(self._clock()) + SESSION_SECS
        return f"{expiry}.{_digest(self._token, f'dashboard-session:{expiry}')}"

    def session_valid(self, value: str) -> bool:
        """``value`` is an unexpired session cookie signed with the current token."""
        if not self.enabled:
            return False
        expiry, _, signature = value.partition(".")
        if not expiry.isdigit() or len(expiry) > 12 or int(expiry) <= self._clock():
            return False
        expected = _digest(self._token, f"dashboard-session:{expiry}")
        return hmac.compare_digest(signature.encode(), expected.encode())

    def allows(self, request: Request) -> bool:
        """A request with the right bearer token or a valid session cookie."""
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return self.token_matches(credentials.strip())
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and self.session_valid(cookie)


def is_https(request: Request) -> bool:
    """The browser reached us over HTTPS: directly, or through a proxy the server trusts.

    ``X-Forwarded-Proto`` is not read here: the server's forwarded-headers handling sets
    the request's scheme from it only for a trusted proxy.
    """
    return request.url.scheme == "https"
