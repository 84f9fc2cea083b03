"""Twilio's side of a call outside the media stream: signed webhooks, TwiML, stream tokens, REST.

A call arrives as a voice webhook signed with ``X-Twilio-Signature``; voxline
answers TwiML that connects a Media Stream and passes a short-lived, single-use
token the stream must present. Hang-up and transfer go through Twilio's REST API.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Dial, Parameter, Stream, VoiceResponse

from voxline.engines.http_clients import async_client


def signature_is_valid(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    """Check ``X-Twilio-Signature`` for a form-encoded webhook at its public ``url``."""
    if not auth_token or not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def connect_twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """TwiML that connects the call to a bidirectional Media Stream."""
    response = VoiceResponse()
    connect = Connect()
    stream = Stream(url=stream_url)
    for name, value in parameters.items():
        stream.append(Parameter(name=name, value=value))
    connect.append(stream)
    response.append(connect)
    return str(response)


def busy_twiml() -> str:
    """TwiML that rejects the call with a busy signal (the server is at capacity)."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return str(response)


def dial_twiml(number: str) -> str:
    """TwiML that transfers the live call to ``number``."""
    response = VoiceResponse()
    response.append(Dial(number))
    return str(response)


class StreamTokenError(ValueError):
    """A stream token is malformed, forged, expired or already used."""


STREAM_SECRET_ENV = "VOXLINE_STREAM_SECRET"
"""The environment variable that gives the stream-token key to every server process."""
MIN_STREAM_SECRET_BYTES = 32
"""Shortest key accepted: 256 bits, what ``openssl rand -hex 32`` gives (and more)."""


class StreamSecretError(ValueError):
    """The configured stream-token key is missing, unreadable or too short (one line)."""


def stream_secret(
    secret_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The stream-token key shared by every server process, or None for a per-process one.

    It comes from ``$VOXLINE_STREAM_SECRET`` or from the file ``secret_file`` names
    (``twilio.stream_secret_file`` in voxline.yaml; surrounding whitespace, such as
    the file's last newline, is not part of the key). Giving both is refused, so two
    processes cannot silently use different keys.

    Raises:
        StreamSecretError: both are given, the file cannot be read, or the key is
            shorter than :data:`MIN_STREAM_SECRET_BYTES`.
    """
    environ = os.environ if environ is None else environ
    from_env = environ.get(STREAM_SECRET_ENV)
    if from_env is not None and secret_file is not None:
        raise StreamSecretError(
            f"both ${STREAM_SECRET_ENV} and twilio.stream_secret_file ({secret_file}) give the "
            "stream-token key: keep one"
        )
    if from_env is not None:
        secret, source = from_env.strip().encode(), f"${STREAM_SECRET_ENV}"
    elif secret_file is not None:
        try:
            with open(secret_file, "rb") as file:
                secret = file.read(64 * 1024).strip()
        except OSError as exc:
            raise StreamSecretError(
                f"twilio.stream_secret_file {secret_file} cannot be read: {exc.strerror or exc}"
            ) from None
        source = f"twilio.stream_secret_file {secret_file}"
    else:
        return None
    if len(secret) < MIN_STREAM_SECRET_BYTES:
        raise StreamSecretError(
            f"{source} holds {len(secret)} bytes: the stream-token key needs at least "
            f"{MIN_STREAM_SECRET_BYTES} (make one with `openssl rand -hex 32`)"
        )
    return secret


def secret_file_warning(secret_file: Path | None) -> str | None:
    """A warning when the stream-key file can be read by other users of the machine."""
    if secret_file is None:
        return None
    try:
        mode = os.stat(secret_file).st_mode
    except (OSError, ValueError):
        return None  # stream_secret() reports a file it cannot read
    if mode & 0o077:
        return (
            f"twilio.stream_secret_file {secret_file} can be read by other users "
            f"(mode {mode & 0o777:o}): chmod 600 it"
        )
    return None


class StreamTokens:
    """Short-lived, single-use tokens that tie a media stream to the webhook that created it.

    The token travels in the TwiML ``<Parameter>`` (Stream URLs take no query
    string) and comes back in ``start.customParameters``. Server processes that
    share a key (:func:`stream_secret`) accept each other's tokens, so the stream
    may reach another process than the webhook did; each process remembers the
    tokens it accepted, so single use holds per process.

    Args:
        secret: the HMAC key, at least :data:`MIN_STREAM_SECRET_BYTES`; random per
            process when None.
        ttl_secs: how long a token is valid after the webhook answered.

    Raises:
        StreamSecretError: the key is too short.
    """

    def __init__(self, secret: bytes | None = None, ttl_secs: float = 60.0):
        if secret is not None and len(secret) < MIN_STREAM_SECRET_BYTES:
            raise StreamSecretError(
                f"the stream-token key holds {len(secret)} bytes: at least "
                f"{MIN_STREAM_SECRET_BYTES} are needed"
            )
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_secs = ttl_secs
        self._used: dict[str, float] = {}

    @classmethod
    def configured(
        cls,
        secret_file: Path | None,
        ttl_secs: float,
        environ: Mapping[str, str] | None = None,
    ) -> StreamTokens:
        """Tokens signed with the key :func:`stream_secret` finds (random if none).

        Raises:
            StreamSecretError: as :func:`stream_secret`.
        """
        return cls(stream_secret(secret_file, environ), ttl_secs=ttl_secs)

    def _mac(self, persona: str, call_sid: str, expires: int) -> str:
        message = f"{persona}|{call_sid}|{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def issue(self, persona: str, call_sid: str, now: float | None = None) -> str:
        """A token for ``call_sid`` answered by ``persona``."""
        expires = int((now or time.time()) + self.ttl_secs)
        return f"{expires}.{self._mac(persona, call_sid, expires)}"

    def redeem(self, token: str, persona: str, call_sid: str, now: float | None = None) -> None:
        """Accept a token once.

        Raises:
            StreamTokenError: saying why the token is refused.
        """
        now = now or time.time()
        for used, expiry in list(self._used.items()):
            if expiry < now:
                del self._used[used]
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit() or not mac:
            raise StreamTokenError("malformed stream token")
        if not hmac.compare_digest(mac, self._mac(persona, call_sid, int(expires_text))):
            raise StreamTokenError("stream token does not match this call")
        if int(expires_text) < now:
            raise StreamTokenError("stream token expired")
        if token in self._used:
            raise StreamTokenError("stream token already used")
        self._used[token] = float(expires_text)


class TwilioRestClient:
    """The two calls voxline makes to Twilio's REST API: hang up and redirect.

    Args:
        account_sid: ``TWILIO_ACCOUNT_SID``.
        auth_token: ``TWILIO_AUTH_TOKEN``.
        base_url: Twilio's API root; configurable so tests use a local stand-in.
    """

    def __init__(self, account_sid: str, auth_token: str, base_url: str, timeout: float = 10.0):
        self._account_sid = account_sid
        self._auth = (account_sid, auth_token)
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout

    async def _update_call(self, call_sid: str, form: dict[str, str]) -> None:
        url = f"{self._base_url}/2010-04-01/Accounts/{self._account_sid}/Calls/{call_sid}.json"
        async with async_client(timeout=self._timeout, auth=self._auth) as client:
            response = await client.post(url, data=form)
        if response.status_code >= 400:
            raise RuntimeError(f"Twilio REST {url} answered HTTP {response.status_code}")

    async def hang_up(self, call_sid: str) -> None:
        """End the call."""
        await self._update_call(call_sid, {"Status": "completed"})

    async def redirect(self, call_sid: str, twiml: str) -> None:
        """Replace the live call's instructions with ``twiml`` (e.g. a ``<Dial>``)."""
        await self._update_call(call_sid, {"Twiml": twiml})
