"""What one call's turns took: the stage times, turn-taking and tools of each caller turn.

:class:`TurnTrace` holds one caller turn as the
:class:`~voxline.processors.latency.LatencyTracer` records it (pipeline-clock
nanoseconds), and turns it into stage latencies and summaries for the log, the call
records, the traces, the metrics and the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxline import logcontent


def _latest(*times: int | None) -> int | None:
    known = [time for time in times if time is not None]
    return max(known) if known else None


STAGES = (
    "stt",
    "llm_first_token",
    "first_chunk",
    "tts_first_audio",
    "transport",
    "voice_to_voice",
    "commit",
)
"""The stages of :meth:`TurnTrace.latencies_ms`, in the order a turn reaches them."""


SPECULATION_RETRIED = ("resumed", "changed", "interrupted")
"""Cancellations after which the same turn gets another speculation."""


@dataclass
class TurnTrace:
    """What happened in one caller turn, with stage times in pipeline-clock ns."""

    index: int
    caller_text: str = ""
    bot_text: str = ""
    speech_end: int | None = None
    stt_request: int | None = None
    transcribed: int | None = None
    llm_first_token: int | None = None
    first_chunk: int | None = None
    tts_first_audio: int | None = None
    audio_out: int | None = None
    llm_done: bool = False
    error: str | None = None
    interrupted: bool = False
    complete: bool = False
    tool_calls: list[dict[str, object]] = field(default_factory=list)
    tools_running: int = 0
    follow_up_expected: bool = False
    speculative_starts: int = 0
    cancellations: list[str] = field(default_factory=list)
    decisions: list[dict[str, object]] = field(default_factory=list)
    committed: int | None = None
    commit_reason: str | None = None
    reused: bool = False
    ready_audio_secs: float | None = None
    barge_in_ms: float | None = None
    transcript_confirmed: bool = False
    audio_released: bool = False
    llm_done_at: int | None = None
    """When the LLM's last completion of the turn ended (the reply's text is all out)."""
    ended: int | None = None
    """When the turn was finished (answered, interrupted or failed)."""
    tool_times: list[tuple[int | None, int]] = field(default_factory=list)
    """When each of :attr:`tool_calls` started (if seen) and returned, in the same order."""
    stt_batch_size: int | None = None
    """Utterances in the Whisper batch that gave the turn's transcript, if known."""
    stt_queue_wait_ms: float | None = None
    """How long that utterance waited for its batch, if known."""
    llm_usage: dict[str, int] = field(default_factory=dict)
    """Token counts the LLM server reported for the turn's completions, summed:
    ``prompt_tokens``, ``completion_tokens`` and, when the server says,
    ``cached_tokens`` (prompt tokens served from its prefix cache)."""

    def latencies_ms(self) -> dict[str, float | None]:
        """Each stage's duration in milliseconds (None where a stage did not happen)."""
        spans = {
            "stt": (self.stt_request, self.transcribed),
            "llm_first_token": (self.transcribed, self.llm_first_token),
            "first_chunk": (self.llm_first_token, self.first_chunk),
            "tts_first_audio": (self.first_chunk, self.tts_first_audio),
            # Audio prepared before the commit waits for it, which is not transport time.
            "transport": (_latest(self.tts_first_audio, self.committed), self.audio_out),
            "voice_to_voice": (self.speech_end, self.audio_out),
            "commit": (self.speech_end, self.committed),
        }
        return {
            name: None if start is None or end is None else round((end - start) / 1e6, 1)
            for name, (start, end) in spans.items()
        }

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary of the turn."""
        return {
            "turn": self.index,
            "caller": self.caller_text,
            "bot": self.bot_text.strip(),
            "interrupted": self.interrupted,
            "error": self.error,
            "tools": self.tool_calls,
            "latency_ms": self.latencies_ms(),
            "turn_taking": {
                "speculative_starts": self.speculative_starts,
                "cancellations": list(self.cancellations),
                "decisions": list(self.decisions),
                "commit_reason": self.commit_reason,
                "reused": self.reused,
                "ready_audio_secs": self.ready_audio_secs,
                "barge_in_ms": self.barge_in_ms,
            },
        }

    def log_dict(self) -> dict[str, object]:
        """:meth:`as_dict` for the log: without what was said unless content is logged.

        The caller's and the bot's words become word counts, tool calls their names
        and whether they failed; timings, ids and turn-taking stay.
        """
        summary = self.as_dict()
        if logcontent.enabled():
            return summary
        summary["caller"] = {"words": len(self.caller_text.split())}
        summary["bot"] = {"words": len(self.bot_text.split())}
        summary["tools"] = [
            {"name": call.get("name"), "failed": _failed(call.get("result"))}
            for call in self.tool_calls
        ]
        return summary

    def count_usage(self, **counts: int | None) -> None:
        """Add a completion's token counts to the turn's (``None``: the server did not say)."""
        for name, count in counts.items():
            if count is not None:
                self.llm_usage[name] = self.llm_usage.get(name, 0) + count

    def reset_speculation(self, reason: str) -> None:
        """Forget a withdrawn speculation's stages: the next one answers the turn."""
        self.cancellations.append(reason)
        self.bot_text = ""
        self.llm_first_token = self.first_chunk = self.tts_first_audio = None
        self.llm_done_at = None
        self.llm_usage = {}
        self.llm_done = False
        self.tools_running = 0
        self.follow_up_expected = False


def _failed(result: object) -> bool:
    return isinstance(result, dict) and "error" in result


@dataclass
class CallTrace:
    """All turns of one call, plus the greeting's text."""

    greeting: str = ""
    turns: list[TurnTrace] = field(default_factory=list)
