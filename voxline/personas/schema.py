"""The Persona schema: everything a business writes to define one voice bot.

A persona file (``personas/<name>.yaml``) names the bot, what it knows and how it
sounds: its system prompt (inline or from a file), greeting, TTS voice, LLM, STT
model, turn-taking settings, the tools it may call, call limits and the lines it
says when something is slow or fails. Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from voxline.personas.turn_settings import TurnSettings
from voxline.tools.spec import TOOL_NAME, ToolSpec
from voxline.yamlfile import StrictModel


class TTSSettings(StrictModel):
    """Which TTS engine speaks for the persona, and with which voice.

    ``piper`` (embedded, offline) takes a Piper voice name; ``orpheus`` takes an
    Orpheus voice and the completions server that serves the Orpheus model.
    """

    engine: Literal["piper", "orpheus"] = "piper"
    voice: str | None = Field(
        default=None, description="Piper voice (default en_US-joe-medium) or Orpheus voice."
    )
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="OpenAI-compatible completions server (Orpheus on vLLM), no /v1.",
    )
    model: str = Field(
        default="canopylabs/orpheus-3b-0.1-ft", description="The served Orpheus model name."
    )
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    max_tokens: int = Field(default=2048, ge=28, le=8192)

    @model_validator(mode="after")
    def _engine_settings(self) -> TTSSettings:
        from voxline.engines.orpheus import VOICES

        if self.engine == "piper":
            if self.voice is None:
                object.__setattr__(self, "voice", "en_US-joe-medium")
            return self
        if self.base_url is None:
            raise ValueError("engine orpheus needs `base_url`: the server that serves Orpheus")
        if self.voice not in VOICES:
            raise ValueError(
                f"unknown Orpheus voice {self.voice!r}: choose one of {', '.join(VOICES)}"
            )
        return self


DEFAULT_LLM_MODEL = "smollm2"
"""The LLM of a persona that names none, when no server config says otherwise."""


class LLMSettings(StrictModel):
    """The chat model that answers, and where it is served."""

    model: str = Field(
        default=DEFAULT_LLM_MODEL,
        min_length=1,
        description="Embedded GGUF name or path, or the served model name. Unset: the "
        "server config's engines.llm.model.",
    )
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible server; empty means the Runtime's embedded server.",
    )
    temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    max_tokens: int = Field(default=60, ge=1, le=4096)
    tool_call_max_tokens: int = Field(
        default=128,
        ge=16,
        le=4096,
        description="The least max_tokens of a completion forced to call a tool (a "
        "tool_choice naming one): a call, not speech, so max_tokens must not cut its "
        "arguments.",
    )
    first_token_timeout_secs: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="A completion with no first token by then (slot wait included) is "
        "abandoned: the caller hears the apology.",
    )
    total_timeout_secs: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A completion still streaming after this long is cut off: the apology.",
    )
    tool_choice: str = Field(
        default="auto",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="auto, none, required, or the name of a tool to call on every reply.",
    )


class STTSettings(StrictModel):
    """Speech recognition model for the persona's callers."""

    model: str = "tiny.en"
    beam_size: int = Field(default=1, ge=1, le=10)


class ChunkingSettings(StrictModel):
    """How the LLM's reply is cut for TTS (docs/tts.md)."""

    min_first_words: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Words the first chunk needs before a clause boundary ends it.",
    )
    # benchmarks/burst_calls.py --calls 1 on vLLM (~30 ms a token on one thread): 250 ms
    # was reached in most replies; 150 ms heard the reply ~150 ms sooner (docs/tts.md).
    max_wait_ms: float = Field(
        default=150,
        ge=50,
        le=5000,
        description="Longest wait for the first chunk's boundary: then its whole words so "
        "far go out (at least max_wait_min_words).",
    )
    max_wait_min_words: int = Field(
        default=3,
        ge=1,
        le=20,
        description="The fewest words of a first chunk cut for max_wait_ms (a slower LLM "
        "waits for them).",
    )
    max_chars: int = Field(default=250, ge=40, le=2000)
    speech_chars_per_sec: float = Field(
        default=20.0,
        gt=0,
        le=100,
        description="How fast the voice speaks, for the estimate of when the audio sent "
        "runs out (Piper's joe voice: 16-20; a higher figure cuts earlier).",
    )
    runway_lead_ms: float | None = Field(
        default=500,
        ge=0,
        le=10000,
        description="How long before the audio sent runs out a sentence still being written "
        "goes out in part (its last clause boundary or whole word); none: whole sentences.",
    )
    slow_first_words: int | None = Field(
        default=6,
        ge=1,
        le=40,
        description="While the reply is written slower than three times the voice's speed (an LLM "
        "shared by many calls at once), its first chunk holds this many words, so that it "
        "lasts until the next words are written and voiced; none: no such rule.",
    )


class CallLimits(StrictModel):
    """Bounds on one call."""

    max_call_secs: float = Field(default=900.0, gt=0)
    idle_prompt_secs: float | None = Field(
        default=8.0,
        gt=0,
        description="Caller silence after which the idle line plays once (none: never).",
    )
    idle_timeout_secs: float = Field(
        default=30.0,
        gt=0,
        description="Silence after the idle line (or, without one, in all) before goodbye.",
    )


class DTMFSettings(StrictModel):
    """Keypad digits pressed by a phone caller, passed to the LLM as the caller's words."""

    enabled: bool = True
    prefix: str = Field(default="Caller pressed ", description="Put before the digits.")
    timeout_secs: float = Field(default=2.0, gt=0, le=30, description="Pause that ends the digits.")
    terminator: str = Field(default="#", pattern=r"^[0-9*#]$")


class Phrases(StrictModel):
    """What the bot says when it cannot simply answer."""

    filler: str = "One moment while I check that."
    apology: str = "I'm sorry, I'm having trouble right now. Could you say that again?"
    goodbye: str = "Thank you for calling. Goodbye."
    transfer: str = "Please hold while I transfer your call."
    idle: str = "Are you still there?"
    not_understood: str | None = Field(
        default="Sorry, I didn't catch that. Could you say it again?",
        description="Said when the caller spoke for a second or more and speech "
        "recognition made no words of it; null: stay silent (the caller hears nothing "
        "until the idle line).",
    )


class Persona(StrictModel):
    """One voice bot, as loaded from ``personas/<name>.yaml``.

    Exactly one of ``prompt`` (inline text) or ``prompt_file`` (a path relative to
    the persona file) gives the system prompt; after loading, ``prompt`` always
    holds the text.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    language: str = Field(default="en", min_length=2, max_length=5)
    prompt: str | None = None
    prompt_file: Path | None = None
    greeting: str | None = None
    tts: TTSSettings = TTSSettings()
    llm: LLMSettings = LLMSettings()
    stt: STTSettings = STTSettings()
    turn: TurnSettings = TurnSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    tools_dir: Path = Field(
        default=Path("../tools"),
        validate_default=True,
        description="Where `<name>.yaml` tool specs are found, relative to the persona file.",
    )
    tools: list[str] = Field(
        default_factory=list,
        description="Built-in tools (end_call, transfer_call, send_dtmf) or tool spec names.",
    )
    limits: CallLimits = CallLimits()
    phrases: Phrases = Phrases()
    filler_after_ms: int = Field(default=800, ge=0)
    dtmf: DTMFSettings = DTMFSettings()

    _tool_specs: dict[str, tuple[ToolSpec, Path]] = PrivateAttr(default_factory=dict)

    @field_validator("language")
    @classmethod
    def _whisper_knows_the_language(cls, language: str) -> str:
        # Whisper refuses an unknown language at every utterance; refuse it here once.
        try:
            from faster_whisper.tokenizer import _LANGUAGE_CODES
        except ImportError:  # checked again when Whisper runs
            return language
        if language not in _LANGUAGE_CODES:
            raise ValueError(
                f"{language!r} is not a language Whisper knows: use its code, e.g. en, es, "
                "fr, de, pt, zh, ja"
            )
        return language

    @field_validator("tools_dir")
    @classmethod
    def _resolve_tools_dir(cls, value: Path, info: ValidationInfo) -> Path:
        base_dir = (info.context or {}).get("base_dir", Path.cwd())
        return value if value.is_absolute() else (Path(base_dir) / value).resolve()

    @field_validator("tools")
    @classmethod
    def _tools_resolve(cls, names: list[str], info: ValidationInfo) -> list[str]:
        for name in names:
            if not TOOL_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a tool name: letters, digits and _ only, as in the "
                    "tool spec's `name` (the spec is <tools_dir>/<name>.yaml)"
                )
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"tool(s) listed twice: {', '.join(duplicates)}")
        tools_dir = info.data.get("tools_dir")
        if tools_dir is not None:
            _load_tool_specs(names, tools_dir)
        return names

    @property
    def fixed_lines(self) -> list[str]:
        """What the bot says in the same words on every call: the greeting and the phrases."""
        lines = [self.greeting] if self.greeting else []
        return lines + [text for text in self.phrases.model_dump().values() if text]

    @model_validator(mode="after")
    def _keep_tool_specs(self) -> Persona:
        self._tool_specs = _load_tool_specs(self.tools, self.tools_dir)
        return self

    @model_validator(mode="after")
    def _default_llm_model(self, info: ValidationInfo) -> Persona:
        # The server config's engines.llm.model, passed by the loader, is the model of
        # every persona whose file does not name one.
        default = (info.context or {}).get("default_llm_model")
        if default and "model" not in self.llm.model_fields_set:
            object.__setattr__(self, "llm", self.llm.model_copy(update={"model": default}))
        return self

    @model_validator(mode="after")
    def _tool_choice_is_listed(self) -> Persona:
        choice = self.llm.tool_choice
        if choice not in ("auto", "none", "required") and choice not in self.tools:
            raise ValueError(f"llm.tool_choice {choice!r} is not one of the persona's tools")
        return self

    @field_validator("prompt_file")
    @classmethod
    def _prompt_file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base_dir = (info.context or {}).get("base_dir", Path.cwd())
        resolved = value if value.is_absolute() else Path(base_dir) / value
        if resolved.exists() and not resolved.is_file():
            raise ValueError(f"prompt file {resolved} is not a regular file: name a text file")
        if not resolved.is_file():
            raise ValueError(
                f"prompt file not found: {resolved} (paths are relative to the persona file)"
            )
        return resolved

    @model_validator(mode="after")
    def _one_prompt(self) -> Persona:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("give exactly one of `prompt` (inline text) or `prompt_file` (a path)")
        if self.prompt_file is not None:
            object.__setattr__(self, "prompt", _read_prompt_file(self.prompt_file))
        if not (self.prompt or "").strip():
            raise ValueError("the system prompt is empty: write the persona's instructions")
        return self

    @property
    def system_prompt(self) -> str:
        """The system prompt text, stripped of surrounding whitespace."""
        return (self.prompt or "").strip()

    @property
    def tool_specs(self) -> dict[str, tuple[ToolSpec, Path]]:
        """The persona's YAML-defined tools: name -> (spec, the spec's folder)."""
        return dict(self._tool_specs)


MAX_PROMPT_BYTES = 256 * 1024
"""Largest system prompt file read: far beyond any LLM context a call can afford."""


def _read_prompt_file(path: Path) -> str:
    """The prompt file's text; every failure is a ValueError saying what to fix."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_PROMPT_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"prompt file {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_PROMPT_BYTES:
        raise ValueError(
            f"prompt file {path} is larger than {MAX_PROMPT_BYTES // 1024} KB: a system prompt "
            "must fit the LLM's context many times over; shorten it"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"prompt file {path}: byte {exc.start} is not UTF-8 text: save it as UTF-8"
        ) from None


def _load_tool_specs(names: list[str], tools_dir: Path) -> dict[str, tuple[ToolSpec, Path]]:
    """Load the spec of every listed tool that is not built in.

    Raises:
        ValueError: naming the tool and the spec file's own problem.
    """
    from voxline.tools.builtins import BUILTINS
    from voxline.tools.spec import load_tool_spec
    from voxline.yamlfile import ConfigError

    specs: dict[str, tuple[ToolSpec, Path]] = {}
    for name in names:
        if name in BUILTINS:
            continue
        path = tools_dir / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(
                f"unknown tool {name!r}: it is not built in ({', '.join(BUILTINS)}) and "
                f"{path} does not exist (write the tool spec there or set `tools_dir`)"
            )
        try:
            spec = load_tool_spec(path)
        except ConfigError as exc:
            raise ValueError(f"tool {name!r}: {exc}") from None
        if spec.name != name:
            raise ValueError(f"tool {name!r}: {path} defines a tool named {spec.name!r}")
        specs[name] = (spec, path.parent)
    return specs
