"""A persona's ``turn:`` section: when the caller's turn ends and when they may interrupt.

The defaults come from measurements on this project's 2-core CPU, cited beside each
field (docs/personas.md lists them; docs/architecture.md tells how a turn ends).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from voxline.yamlfile import StrictModel

SpokenLine = Literal[
    "greeting", "goodbye", "transfer", "filler", "apology", "idle", "not_understood"
]
"""The persona's fixed lines, which can be made non-interruptible."""


class TurnSettings(StrictModel):
    """When the caller's turn starts and ends, and when the caller may interrupt the bot.

    The turn is committed when the VAD has heard ``early_secs`` of silence and the
    end-of-turn model says the caller is done, or when the silence reaches
    ``stop_secs`` whatever the model says. With ``speculate`` on, transcription,
    the LLM and the first TTS chunk start at ``early_secs`` and their audio plays at
    the commit; the caller speaking again first cancels them (docs/architecture.md).
    """

    # Measured on Piper speech through 8 kHz µ-law: confidence 0.6, 0.15 s and
    # min_volume 0.3 hear a barge-in 200-240 ms after its onset; pipecat's 0.7 /
    # 0.2 s / 0.6 took up to 820 ms on quiet phone audio.
    vad_confidence: float = Field(default=0.6, gt=0.0, lt=1.0)
    vad_start_secs: float = Field(default=0.15, ge=0.0, le=2.0)
    min_volume: float = Field(default=0.3, ge=0.0, le=1.0)
    model: str = Field(
        default="smart-turn-v3.2",
        min_length=1,
        description="End-of-turn model: smart-turn-v3.2 (packaged), a path to an ONNX "
        "file of the same kind, or none (a fixed silence ends the turn).",
    )
    model_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Measured (benchmarks/turn_latency.py, espeak-ng callers): Smart Turn gave pauses in
    # mid-sentence 0.01-0.11, and finished questions heard over the phone 0.15-0.46 as often
    # as above 0.5; those waited for stop_secs.
    model_unsure_threshold: float | None = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="A turn the model judges unfinished with at least this probability "
        "ends after unsure_stop_secs of silence instead of stop_secs; null: off.",
    )
    unsure_stop_secs: float = Field(
        default=0.7,
        gt=0.0,
        le=5.0,
        description="Silence that ends a turn the model was unsure about (see "
        "model_unsure_threshold).",
    )
    model_fallback: bool = Field(
        default=False,
        description="If the model file is missing or corrupt, run with model none "
        "instead of refusing to start.",
    )
    # Smart Turn was benchmarked by pipecat after 0.2 s of VAD silence; a shorter wait
    # asks it inside phrases (espeak-ng voices pause 0.12-0.14 s between words, and
    # "I was wondering" cut there is judged complete).
    early_secs: float = Field(
        default=0.2,
        gt=0.0,
        le=3.0,
        description="Silence after which the turn model decides and speculative work starts.",
    )
    stop_secs: float = Field(
        default=None,  # type: ignore[assignment]  # resolved below from `model`
        gt=0.0,
        le=5.0,
        description="Silence that ends the caller's turn whatever the model says "
        "(default 1.2 s with a model, 0.4 s with none).",
    )
    speculate: bool = Field(
        default=True, description="Start STT, the LLM and TTS at early_secs, play at commit."
    )
    question_ends_turn: bool = Field(
        default=True,
        description="A transcript ending in a question mark ends the turn at early_secs, "
        "whatever the model says.",
    )
    # Off by default: with tiny.en, "um" after "about" / "to" came out as "them." and a
    # 0.6-1.0 s hesitation there got a reply to half a sentence (docs/benchmarks.md).
    sentence_end_secs: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="A transcript ending a finished sentence (not on 'to', 'and', 'could', "
        "'um'...) ends the turn after this much silence, whatever the model says; null: off.",
    )
    # Through the phone line at eight calls, the model judged "So I was wondering if you
    # could" complete (p 0.94) and the bot answered half a sentence (docs/benchmarks.md).
    mid_sentence_waits: bool = Field(
        default=True,
        description="A transcript that stops mid-sentence (on 'to', 'the', 'whether', "
        "'um', on 'could' or 'is' after more than four words, or trailing off) waits for "
        "stop_secs even when the model judged the turn complete (English word lists).",
    )
    allow_interruptions: bool = True
    pause_bot_on_speech: bool = Field(
        default=True,
        description="The bot falls silent as soon as the caller speaks over it, and goes "
        "on from where it stopped if that was a backchannel or a cough; false: it talks "
        "on until the barge-in is decided.",
    )
    # Measured on Piper speech with the VAD above: "Uh-huh." is voiced for 0.28 s,
    # "Okay." 0.40 s, "Mm-hmm." 0.52 s; "Wait," 0.22 s and "Stop." 0.52 s. A stretch
    # of 0.6 s is no backchannel; shorter speech interrupts only if it carries words.
    interrupt_min_secs: float = Field(
        default=0.6,
        ge=0.0,
        le=5.0,
        description="A stretch of caller speech this long interrupts the bot.",
    )
    interrupt_min_words: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Shorter speech interrupts once Whisper hears this many words that are "
        "not backchannels (uh-huh, okay, yeah).",
    )
    overheard: Literal["join", "drop"] = Field(
        default="join",
        description="What becomes of caller words that did not interrupt the bot: they "
        "join the caller's next turn, or are dropped.",
    )
    uninterruptible: list[SpokenLine] = Field(
        default_factory=lambda: ["goodbye", "transfer"],
        description="Fixed lines the caller cannot talk over. The default keeps the two "
        "after which the bot leaves the call: cut short, the caller would hear the line "
        "stop and then the hang-up or the transfer, with nothing said.",
    )

    @model_validator(mode="after")
    def _resolve_stop_secs(self) -> TurnSettings:
        if self.stop_secs is None:
            stop = DEFAULT_STOP_SECS_WITH_MODEL if self.uses_model else DEFAULT_STOP_SECS
            object.__setattr__(self, "stop_secs", stop)
        if self.early_secs > self.stop_secs:
            raise ValueError(
                f"early_secs ({self.early_secs}) must not exceed stop_secs ({self.stop_secs})"
            )
        unsure = self.model_unsure_threshold
        if unsure is not None and unsure >= self.model_threshold:
            raise ValueError(
                f"model_unsure_threshold ({unsure}) must be below model_threshold "
                f"({self.model_threshold}), or null"
            )
        return self

    @property
    def uses_model(self) -> bool:
        """Whether an end-of-turn model decides before ``stop_secs``."""
        return self.model.lower() != "none"


DEFAULT_STOP_SECS = 0.4
"""Silence that ends a turn without an end-of-turn model."""
DEFAULT_STOP_SECS_WITH_MODEL = 1.2
"""Silence that ends a turn the model judged unfinished: longer than a thinking pause."""
