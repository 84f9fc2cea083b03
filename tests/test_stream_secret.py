"""The stream-token key is shared by every server process that is given the same one.

Behind a load balancer the webhook and the media stream of one call may reach two
different processes: a token one issued must be accepted by the other when both
read the same key from ``$VOXLINE_STREAM_SECRET`` or ``twilio.stream_secret_file``,
refused when their keys differ, and a key too short to be secret stops ``serve``
before it loads anything.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ElementTree

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import BANK_PERSONA, VOXLINE
from voxline.bot.runtime import Runtime
from voxline.config import load_config
from voxline.personas import load_persona
from voxline.server.admission import Admission
from voxline.server.phone import PhoneLine
from voxline.transports.twilio_webhook import (
    STREAM_SECRET_ENV,
    StreamSecretError,
    StreamTokenError,
    StreamTokens,
)

KEY = "4f1c0d9e2b7a8c6d5e3f1a0b9c8d7e6f5a4b3c2d1e0f9a8b"
URL = "https://voice.example.com/twilio/voice"
AUTH = "webhook-test-token"


def write_config(tmp_path, secret: str | None = KEY):
    lines = [f"default_persona: {BANK_PERSONA}"]
    if secret is not None:
        (tmp_path / "stream.key").write_text(secret + "\n")
        lines.append("twilio:\n  stream_secret_file: stream.key")
    path = tmp_path / "voxline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def phone_line(config) -> PhoneLine:
    bank = load_persona(BANK_PERSONA)
    return PhoneLine(
        config=config,
        runtime=Runtime(config),
        personas={bank.name: bank},
        numbers={},
        admission=Admission(max_calls=4),
        tokens=StreamTokens.configured(
            config.twilio.stream_secret_file, config.twilio.stream_token_ttl_secs, environ={}
        ),
    )


def answered_token(line: PhoneLine, call_sid: str) -> str:
    params = {"CallSid": call_sid, "To": "+15550000000"}
    signature = RequestValidator(AUTH).compute_signature(URL, params)
    twiml = line.answer_webhook(URL, params, signature)
    stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}["token"]


def test_two_processes_with_the_same_key_file_accept_each_others_streams(tmp_path, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH)
    config = load_config(write_config(tmp_path))
    assert config.twilio.stream_secret_file == tmp_path / "stream.key"
    first, second = phone_line(config), phone_line(config)
    token = answered_token(first, "CA-balanced")
    second.tokens.redeem(token, "bank_support", "CA-balanced")  # the other process
    with pytest.raises(StreamTokenError, match="already used"):
        second.tokens.redeem(token, "bank_support", "CA-balanced")
    # Single use is per process: the process that issued it has not seen it used.
    first.tokens.redeem(token, "bank_support", "CA-balanced")


def test_the_environment_gives_the_same_key_to_every_process():
    environ = {STREAM_SECRET_ENV: KEY}
    issuer = StreamTokens.configured(None, 60.0, environ=environ)
    other = StreamTokens.configured(None, 60.0, environ=environ)
    other.redeem(issuer.issue("bank_support", "CA1"), "bank_support", "CA1")


def test_different_keys_refuse_each_others_tokens(tmp_path):
    issuer = StreamTokens.configured(None, 60.0, environ={STREAM_SECRET_ENV: KEY})
    other = StreamTokens.configured(None, 60.0, environ={STREAM_SECRET_ENV: KEY[::-1]})
    with pytest.raises(StreamTokenError, match="does not match"):
        other.redeem(issuer.issue("bank_support", "CA1"), "bank_support", "CA1")
    # Without a key each process has its own random one, as before.
    with pytest.raises(StreamTokenError, match="does not match"):
        StreamTokens().redeem(StreamTokens().issue("p", "CA2"), "p", "CA2")


@pytest.mark.parametrize(
    ("environ", "secret_file", "expected"),
    [
        ({STREAM_SECRET_ENV: "too-short"}, None, "$VOXLINE_STREAM_SECRET holds 9 bytes"),
        ({STREAM_SECRET_ENV: "  \n"}, None, "holds 0 bytes"),
        ({}, "short", "holds 5 bytes"),
        ({}, "missing", "cannot be read"),
        ({STREAM_SECRET_ENV: KEY}, KEY, "keep one"),
    ],
    ids=["short env", "blank env", "short file", "missing file", "both"],
)
def test_a_bad_key_is_refused(tmp_path, environ, secret_file, expected):
    path = None
    if secret_file is not None:
        path = tmp_path / "stream.key"
        if secret_file != "missing":
            path.write_text(secret_file)
    with pytest.raises(StreamSecretError) as refused:
        StreamTokens.configured(path, 60.0, environ=environ)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("where", ["env", "file"])
def test_serve_refuses_a_short_key_at_start_with_one_line(tmp_path, voxline_env, where):
    env = dict(voxline_env)
    env.pop(STREAM_SECRET_ENV, None)
    if where == "env":
        config = write_config(tmp_path, secret=None)
        env[STREAM_SECRET_ENV] = "hunter2"
    else:
        config = write_config(tmp_path, secret="hunter2")
    result = subprocess.run(
        [VOXLINE, "serve", "--config", str(config), "--port", "9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("voxline: error: ")
    assert "holds 7 bytes: the stream-token key needs at least 32" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    """Two `voxline serve` processes with one stream key: A from the environment, B from a file.

    A third, C, has another key. Each runs the bank persona on its own llama.cpp server.
    """
    import os

    from tests.servers import start_voxline
    from voxline.engines.llm import free_port

    root = tmp_path_factory.mktemp("balanced")
    (root / "stream.key").write_text(KEY + "\n")
    servers = {}
    try:
        for name, key_in in [("a", "env"), ("b", "file"), ("c", "other")]:
            config = root / f"{name}.yaml"
            lines = [
                f"default_persona: {BANK_PERSONA}",
                "max_calls: 2",
                # A's reservation for the call whose stream went to B would hold its stop
                # for the drain's 30 s.
                "drain_timeout_secs: 0",
                "engines:\n  llm: {backend: llama_cpp}",
            ]
            if key_in == "file":
                lines.append(f"twilio: {{stream_secret_file: {root / 'stream.key'}}}")
            config.write_text("\n".join(lines) + "\n")
            env = {**os.environ, "TWILIO_AUTH_TOKEN": AUTH, "VOXLINE_OFFLINE": "1"}
            env.pop(STREAM_SECRET_ENV, None)
            if key_in == "env":
                env[STREAM_SECRET_ENV] = KEY
            elif key_in == "other":
                env[STREAM_SECRET_ENV] = KEY[::-1]
            port = free_port()
            servers[name] = (
                start_voxline(config, env, port, wait=False),
                f"http://127.0.0.1:{port}",
            )
        for server, _ in servers.values():
            server.wait_ready(240)
        yield {name: url for name, (_, url) in servers.items()}
    finally:
        for server, _ in servers.values():
            server.stop()


@pytest.mark.slow
def test_a_stream_is_answered_by_another_process_that_shares_the_key(two_servers):
    """Twilio's webhook reaches A, its media stream reaches B (as a balancer may route them)."""
    import asyncio

    import numpy as np

    from voxline.transports.caller_frames import RATE
    from voxline.transports.twilio_caller import TwilioCaller

    caller = TwilioCaller(two_servers["a"], auth_token=AUTH)

    async def balanced_call():
        url, parameters = await caller.request_stream()  # answered by A
        assert url.startswith(two_servers["a"].replace("http", "ws"))
        to_b = url.replace(
            two_servers["a"].replace("http", "ws"), two_servers["b"].replace("http", "ws")
        )
        return await caller.call(
            np.zeros(0, dtype=np.float32), RATE, stream=(to_b, parameters), timeout=60
        )

    result = asyncio.run(balanced_call())
    assert result.close_code != 1008, result.received[:5]
    assert "media" in result.received  # B played the greeting
    assert np.abs(result.heard).max() > 1000, "the caller heard no greeting from B"

    # C signs with another key: the same kind of token from A is refused there.
    caller = TwilioCaller(two_servers["a"], auth_token=AUTH)

    async def wrong_key_call():
        url, parameters = await caller.request_stream()
        to_c = url.replace(
            two_servers["a"].replace("http", "ws"), two_servers["c"].replace("http", "ws")
        )
        return await caller.call(
            np.zeros(0, dtype=np.float32), RATE, stream=(to_c, parameters), timeout=30
        )

    refused = asyncio.run(wrong_key_call())
    assert refused.close_code == 1008
    assert "media" not in refused.received


def test_check_warns_when_other_users_can_read_the_key_file(tmp_path, voxline_env):
    config = write_config(tmp_path)
    key = tmp_path / "stream.key"
    results = {}
    for mode in (0o644, 0o600):
        key.chmod(mode)
        results[mode] = subprocess.run(
            [VOXLINE, "check", str(config)],
            capture_output=True,
            text=True,
            env=voxline_env,
            timeout=60,
        )
    loose, tight = results[0o644], results[0o600]
    assert loose.returncode == tight.returncode == 0, loose.stderr + tight.stderr
    assert f"{config}: warning: twilio.stream_secret_file {key} can be read by other users" in (
        loose.stderr
    )
    assert "chmod 600" in loose.stderr
    assert "warning" not in tight.stderr
