"""The server configuration (``voxline.yaml``): shared engine settings and capacity.

Every field has a default that runs the embedded CPU stack offline, so a missing
``voxline.yaml`` is a valid configuration. Secrets never live here: they come
from the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from voxline.engine_config import (
    COMMAND_LLM_BACKENDS,
    Command,
    EnginesConfig,
    LLMBackendName,
)
from voxline.records.settings import RecordsConfig, check_records_url
from voxline.yamlfile import StrictModel, load_yaml_model

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
"""A phone number as Twilio writes it: +, country code and number, at most 15 digits."""


class TwilioConfig(StrictModel):
    """Phone calls through Twilio (credentials come from the environment, never from here)."""

    rest_base_url: str = Field(
        default="https://api.twilio.com",
        description="Twilio's REST root; point it at a local stand-in for tests.",
    )
    stream_token_ttl_secs: float = Field(default=60.0, gt=0, le=3600)
    stream_secret_file: Path | None = Field(
        default=None,
        description="File holding the stream-token key (at least 32 bytes) shared by every "
        "server process behind one balancer; $VOXLINE_STREAM_SECRET instead; neither: a "
        "random key per process. Relative to this file.",
    )
    # Measured with benchmarks/reply_stalls.py --compare send-ahead, 4 calls at once on 2
    # cores: 20 ms frames paced in real time stalled 95 times in 12 calls' replies, these
    # defaults 14 times.
    out_frame_ms: int = Field(
        default=60,
        ge=20,
        le=200,
        multiple_of=10,
        description="Length of each media message voxline sends (ms): longer frames cost "
        "the event loop fewer writes per second of speech; a held barge-in lets at most "
        "one frame play on.",
    )
    send_ahead_ms: float = Field(
        default=120.0,
        ge=0.0,
        le=1000.0,
        description="Audio written ahead of what the caller has heard, kept in Twilio's "
        "buffer against a late event loop (0: real time). Twilio drops it on clear (every "
        "interruption); while a barge-in is being decided it can play out.",
    )
    busy_status: Literal[200, 503] = Field(
        default=200,
        description="HTTP status of the voice webhook's busy answer (at max_calls or "
        "draining): 200 gives Twilio the busy TwiML (one process, or a balancer that routes "
        "on /health/ready); 503 lets a balancer that retries on 503 try another process "
        "(it must answer busy TwiML itself when every process is busy: docs/operations.md).",
    )


class WidgetConfig(StrictModel):
    """One embeddable widget: which persona answers it and which sites may embed it."""

    persona: Path | None = Field(
        default=None, description="Persona file; default_persona if unset."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Pages that may start calls (scheme://host[:port]); empty = this server only.",
    )
    allow_non_browser_clients: bool = Field(
        default=False,
        description="Take offers and candidates without an Origin header (scripts, native apps, "
        "kiosks): browsers always send one, so the default refuses them with 403.",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://shop.example.com")
        return origins


class IceServerConfig(StrictModel):
    """A STUN or TURN server the browser and the server use to find a path to each other."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class WebRTCConfig(StrictModel):
    """Browser calls: ICE servers and limits on the signaling endpoint."""

    ice_servers: list[IceServerConfig] = Field(default_factory=list)
    max_sdp_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    offers_per_minute_per_ip: int = Field(default=10, ge=1)
    candidate_patches_per_minute_per_ip: int = Field(
        default=60, ge=1, description="Trickled-candidate PATCHes one address may send a minute."
    )


class HTTPConfig(StrictModel):
    """Bounds on every HTTP request and websocket handshake, whatever the route."""

    max_body_bytes: int = Field(
        default=65_536,
        ge=1024,
        le=16_777_216,
        description="Largest request body (WebRTC offers: at least webrtc.max_sdp_bytes); 413.",
    )
    requests_per_minute_per_ip: int = Field(
        default=600,
        ge=1,
        description="Requests and websocket handshakes one client address may make a minute "
        "(bursts up to that many); beyond it 429. Behind a proxy listed in trusted_proxies, "
        "the address is the one the proxy reports in X-Forwarded-For.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Addresses or networks (10.0.0.0/8) of the proxies whose X-Forwarded-For, "
        "X-Forwarded-Proto and X-Forwarded-Host are believed: the client's address (rate "
        "limits) and the URL the Twilio signature is checked against (when public_url is "
        'unset). "*" trusts every peer; [] none. Headers from any other peer are ignored.',
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f'{entry!r} is not an IP address or network (like 10.0.0.0/8), nor "*"'
                ) from None
        return entries


class HealthConfig(StrictModel):
    """How ``/health/ready`` learns whether the LLM and TTS servers answer."""

    check_interval_secs: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Time between background checks of every LLM and TTS server in use; "
        "readiness reads the last verdict (no I/O per probe).",
    )
    check_timeout_secs: float = Field(
        default=2.0, gt=0, le=60, description="How long one server may take to answer a check."
    )
    busy_limit_secs: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long a server that takes the connection but answers checks late "
        "(busy generating) stays ready before it is reported; a refused connection or an "
        "error is reported at once.",
    )


class TelemetryConfig(StrictModel):
    """OpenTelemetry traces: off unless an OTLP endpoint is set (docs/operations.md)."""

    otlp_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s?#]+$",
        description="OTLP/HTTP base URL of a collector, Jaeger or Langfuse (/v1/traces is "
        "appended); $OTEL_EXPORTER_OTLP_ENDPOINT does the same when this is unset. Needs "
        "the otel extra. Headers (an API key) come from $OTEL_EXPORTER_OTLP_HEADERS.",
    )
    service_name: str = Field(default="voxline", min_length=1, max_length=100)
    max_queued_spans: int = Field(
        default=2048,
        ge=64,
        le=1_000_000,
        description="Spans waiting for export; beyond it new spans are dropped, not queued.",
    )


class ServerConfig(StrictModel):
    """The whole ``voxline.yaml``.

    Persona paths are relative to the config file.
    """

    engines: EnginesConfig = EnginesConfig()
    max_calls: int = Field(default=4, ge=1)
    drain_timeout_secs: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="On SIGTERM (or the first Ctrl-C) the process takes no new call and "
        "lets the calls in progress go on this long; then each hears the persona's goodbye "
        "and is hung up, and the process exits 0. A second signal stops at once. Give a "
        "container platform a grace period longer than this plus ~20 s for the goodbyes.",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#]+$",
        description="How Twilio reaches this server: scheme and host, no path.",
    )
    default_persona: Path | None = None
    numbers: dict[str, Path] = Field(
        default_factory=dict, description="Called number (E.164) -> persona file."
    )
    twilio: TwilioConfig = TwilioConfig()
    widgets: dict[str, WidgetConfig] = Field(
        default_factory=lambda: {"demo": WidgetConfig()},
        description="Widget key -> persona and allowed origins; `demo` is the / page's.",
    )
    webrtc: WebRTCConfig = WebRTCConfig()
    http: HTTPConfig = HTTPConfig()
    health: HealthConfig = HealthConfig()
    records_url: str | None = Field(
        default=None,
        description="Call records database: sqlite:///path (relative to this file) or "
        "postgresql://user@host/db; default: a SQLite file (docs/records.md).",
    )
    records: RecordsConfig = RecordsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    log_content: bool = Field(
        default=False,
        description="Log what callers and the bot say, tool arguments and results, LLM "
        "contexts and whole phone numbers (development only; $VOXLINE_LOG_CONTENT=1 too). "
        "Off: lines carry ids, timings and counts, and numbers are masked.",
    )

    @field_validator("widgets", mode="after")
    @classmethod
    def _widget_personas(cls, widgets: dict[str, WidgetConfig], info: ValidationInfo):
        base_dir = Path((info.context or {}).get("base_dir", "."))
        resolved = {}
        for key, widget in widgets.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
                raise ValueError(f"widget key {key!r}: use letters, digits, - and _ only")
            persona = widget.persona
            if persona is not None and not persona.is_absolute():
                persona = base_dir / persona
            resolved[key] = widget.model_copy(update={"persona": persona})
        return resolved

    @field_validator("twilio", mode="after")
    @classmethod
    def _secret_file_relative_to_config(cls, twilio: TwilioConfig, info: ValidationInfo):
        if twilio.stream_secret_file is None:
            return twilio
        path = twilio.stream_secret_file.expanduser()
        if not path.is_absolute():
            path = Path((info.context or {}).get("base_dir", ".")) / path
        return twilio.model_copy(update={"stream_secret_file": path})

    @field_validator("records_url", mode="after")
    @classmethod
    def _records_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        base_dir = Path((info.context or {}).get("base_dir", "."))
        return None if url is None else check_records_url(url, base_dir)

    @field_validator("numbers", mode="before")
    @classmethod
    def _e164_numbers(cls, numbers: object) -> object:
        # Twilio sends the called number in E.164 ("+15550100001"); any other spelling
        # would never match and its calls would silently reach the default persona.
        if not isinstance(numbers, dict):
            return numbers
        for number in numbers:
            if isinstance(number, int):
                raise ValueError(
                    f'{number}: quote the number ("+{number}"): unquoted, YAML reads it '
                    "as an integer"
                )
            if not isinstance(number, str) or not E164.fullmatch(number):
                raise ValueError(
                    f"{number!r} is not a phone number as Twilio sends it (E.164, like "
                    '"+15550100001"): a + and the country code, no spaces'
                )
        return numbers

    @field_validator("default_persona", "numbers", mode="after")
    @classmethod
    def _relative_to_config(cls, value, info: ValidationInfo):
        base_dir = Path((info.context or {}).get("base_dir", "."))

        def resolve(path: Path) -> Path:
            return path if path.is_absolute() else base_dir / path

        if isinstance(value, dict):
            return {number: resolve(path) for number, path in value.items()}
        return None if value is None else resolve(value)

    def for_command(self, command: Command) -> ServerConfig:
        """This config with ``engines.llm.backend`` resolved for ``command`` when unset.

        A backend set in ``voxline.yaml`` wins; otherwise ``serve`` gets vLLM and
        ``talk`` llama.cpp (:data:`COMMAND_LLM_BACKENDS`).
        """
        if self.engines.llm.backend is not None:
            return self
        return self.with_llm_backend(COMMAND_LLM_BACKENDS[command])

    def with_llm_backend(self, backend: LLMBackendName) -> ServerConfig:
        """This config with the embedded LLM server set to ``backend``."""
        llm = self.engines.llm.model_copy(update={"backend": backend})
        return self.model_copy(update={"engines": self.engines.model_copy(update={"llm": llm})})

    def persona_paths(self) -> list[Path]:
        """Every persona file the server answers with, default first, without repeats."""
        paths = [
            self.default_persona,
            *self.numbers.values(),
            *(widget.persona for widget in self.widgets.values()),
        ]
        return list(dict.fromkeys(path for path in paths if path is not None))


def load_config(path: Path | str | None) -> ServerConfig:
    """Load ``voxline.yaml``; ``None`` (or ``$VOXLINE_CONFIG`` unset) gives the defaults.

    Raises:
        voxline.yamlfile.ConfigError: naming the file and each bad field.
    """
    path = path or os.environ.get("VOXLINE_CONFIG")
    if not path:
        return ServerConfig()
    return load_yaml_model(path, ServerConfig, wrong_kind=_not_a_server_config)


def _not_a_server_config(document: dict) -> str | None:
    """Say so when the document is a persona or a tool spec, not a server config."""
    from voxline.personas import Persona

    keys = set(document)
    if keys & ServerConfig.model_fields.keys():
        return None
    if keys & {"python", "http", "parameters"}:
        return "this is a tool spec, not a server config: list it under a persona's `tools`"
    if keys & Persona.model_fields.keys():
        return (
            "this is a persona, not a server config (voxline.yaml): give it with --persona, "
            "or name it in a config's default_persona"
        )
    return None
