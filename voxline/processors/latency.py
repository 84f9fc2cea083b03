"""Per-turn latency tracer: stage timestamps for every caller turn.

Watches the frames of one call (as a pipecat observer, so no processor is
added to the pipeline) and records, for each turn, when the caller went quiet,
when the utterance went to STT and came back, the LLM's first token, the first
chunk handed to TTS, TTS's first audio and the first audio sent to the caller.
All times are the pipeline clock's (nanoseconds since the call started).

With speculative turn-taking the reply is prepared before the turn is
committed: a turn records its speculative starts and their cancellations, the
end-of-turn model's decisions, the commit, and how much reply audio was ready at
the commit. Stage times are those of the speculation that was kept.

The first audio sent is the output transport's ``BotStartedSpeakingFrame`` when
the bot was silent; a reply queued behind audio still playing starts where the
:class:`~voxline.processors.audio_ledger.AudioLedger` says. A reply is over when the
bot goes quiet after TTS has closed it, not at a pause between two sentences nor at a
hang-up (:class:`~voxline.processors.bot_speech.BotSpeech`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    ErrorFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_output import BaseOutputTransport

from voxline.processors.audio_ledger import AudioLedger
from voxline.processors.bot_speech import BotSpeech
from voxline.processors.frames import (
    BargeInFrame,
    EndOfTurnDecisionFrame,
    SpeculationCancelledFrame,
    SpeculationReleasedFrame,
    SpeculationStartedFrame,
    TranscriptionSkippedFrame,
    TurnCommittedFrame,
)
from voxline.processors.latency_transcripts import TranscriptTurns
from voxline.processors.pending_utterances import PendingUtterances
from voxline.processors.turn import TurnTaker
from voxline.processors.turn_trace import CallTrace, TurnTrace


def _on_its_way_out(data: FramePushed) -> bool:
    """Audio headed for the transport: past the speculative audio gate, if there is one.

    TTS pushes a speculative reply's audio into the gate, which may drop it; what
    the gate lets through (or TTS pushes straight to the transport) will play.
    """
    return isinstance(data.destination, BaseOutputTransport) or not isinstance(
        data.source, TTSService
    )


def _seconds(frame: TTSAudioRawFrame) -> float:
    return frame.num_frames / max(1, frame.sample_rate)


class LatencyTracer(BaseObserver, TranscriptTurns):
    """Records a :class:`TurnTrace` per caller turn and knows when the call is idle.

    Args:
        speech_end_at: optional ``f(vad_stop_ns, stop_secs) -> ns`` giving the time
            of the caller's last voiced audio before a VAD stop, for transports that
            know it exactly; otherwise it is the VAD stop time minus ``stop_secs``.
        on_turn: called with each turn when it completes.
        ending_tools: tools whose result means the call is ending by itself (its
            goodbye is still to come, then the pipeline ends): after one, the call is
            never idle again. Without this, a harness waiting for idle to end the call
            could queue its own end ahead of the goodbye.
    """

    def __init__(
        self,
        *,
        speech_end_at: Callable[[int, float], int | None] | None = None,
        on_turn: Callable[[TurnTrace], None] | None = None,
        ending_tools: Collection[str] = ("end_call",),
        **kwargs,
    ):
        super().__init__(observe_every_push=False, **kwargs)
        self.trace = CallTrace()
        self._speech_end_at = speech_end_at
        self._on_turn = on_turn
        self._ending_tools = frozenset(ending_tools)
        self._call_ending = False
        self._pending = PendingUtterances()
        self._turn: TurnTrace | None = None
        self._user_speaking = False
        self._bot = BotSpeech()
        self._greeting_pending = True
        self._audio = AudioLedger()
        # An LLM response is being generated; an interruption cancels it, and the
        # end frame pushed on its way out does not end the turn's answer.
        self._llm_responding = False
        self._llm_interrupted = False
        # What happened to the caller's turn before it had a transcript.
        self._decisions: list[dict[str, object]] = []
        self._withdrawn = False  # a withdrawn speculation's frames are still arriving
        self._barge_in_ms: float | None = None
        self._tools_started: dict[str, int] = {}  # tool_call_id -> when it started
        self._last_stt: tuple[int, float] | None = None
        self._now = 0
        self.greeting_done = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def note_stt(self, batch_size: int, queue_wait_secs: float) -> None:
        """The speech recognizer's batch size and queue wait for the transcript it just gave.

        The next turn transcript takes them (the recognizer calls this just before the
        turn-taker pushes that transcript's frame).
        """
        self._last_stt = (batch_size, round(queue_wait_secs * 1000, 1))

    @property
    def turns(self) -> list[TurnTrace]:
        """Completed and in-progress turns, in order."""
        return self.trace.turns

    def _update_idle(self) -> None:
        busy = (
            self._call_ending
            or self._user_speaking
            or self._bot.speaking
            or self._pending.waiting
            or (self._turn is not None and not self._turn.complete)
        )
        if busy:
            self.idle.clear()
        else:
            self.idle.set()

    async def on_push_frame(self, data: FramePushed):
        """Record the stage a frame marks."""
        frame, now = data.frame, data.timestamp
        self._now = now
        if isinstance(frame, ErrorFrame):
            if isinstance(frame.processor, (STTService, TurnTaker)):
                # Speech recognition failed: the utterance waiting for its transcript
                # gets none, so the next transcript must not be timed from it.
                self._pending.failed()
            elif self._turn is not None and not self._turn.complete:
                # The turn's answer is now the apology the session speaks for it.
                self._turn.error = frame.error
            self._update_idle()
            return
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, CancelFrame):
            self._bot.torn_down = True
        elif isinstance(frame, TTSStartedFrame):
            self._bot.synthesis_started()
        elif isinstance(frame, TTSStoppedFrame):
            if self._bot.synthesis_stopped():  # quiet since a pause, nothing more to play
                self._on_speech_over()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._user_speaking = True
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._user_speaking = False
            speech_end = None
            if self._speech_end_at is not None:
                speech_end = self._speech_end_at(now, frame.stop_secs)
            if speech_end is None:
                speech_end = now - int(frame.stop_secs * 1e9)
            self._pending.sent(stt_request=now, speech_end=speech_end)
        elif isinstance(frame, TranscriptionSkippedFrame):
            self._pending.skipped()
        elif isinstance(frame, SpeculationStartedFrame):
            self._on_transcription(frame.text, now, whole_utterance=True)
        elif isinstance(frame, SpeculationCancelledFrame):
            self._bot.dropped()
            self._on_speculation_cancelled(frame.reason)
        elif isinstance(frame, EndOfTurnDecisionFrame):
            decision = {"complete": frame.complete, "p": frame.probability}
            if frame.overruled:
                decision["overruled"] = True
            self._decisions.append({**decision, "ms": frame.latency_ms})
        elif isinstance(frame, BargeInFrame):
            self._barge_in_ms = frame.after_ms
        elif isinstance(frame, TurnCommittedFrame):
            self._on_commit(frame, now)
        elif isinstance(frame, SpeculationReleasedFrame):
            if self._turn is not None and not self._turn.complete:
                self._turn.ready_audio_secs = frame.ready_audio_secs
        elif isinstance(frame, TranscriptionFrame):
            turn = self._turn
            if turn is not None and turn.committed is not None and not turn.transcript_confirmed:
                turn.transcript_confirmed = True  # the committed turn's own transcript
                turn.caller_text = frame.text.strip()
            else:
                self._on_transcription(frame.text, now)
        elif isinstance(frame, LLMTextFrame):
            turn = self._turn
            if turn is not None and not turn.complete and not self._withdrawn:
                if turn.llm_first_token is None:
                    turn.llm_first_token = now
                turn.bot_text += frame.text
        elif isinstance(frame, AggregatedTextFrame):
            if self._turn is not None and self._turn.first_chunk is None and not self._withdrawn:
                self._turn.first_chunk = now
        elif isinstance(frame, TTSAudioRawFrame):
            if isinstance(data.source, BaseOutputTransport):
                self._on_audio_written(frame, now)
            else:
                self._bot.audio_synthesized()
                turn = self._turn
                if turn is not None and turn.tts_first_audio is None and not self._withdrawn:
                    turn.tts_first_audio = now  # synthesized, perhaps before the commit
                if _on_its_way_out(data):
                    self._on_audio_produced(frame)
        elif isinstance(frame, FunctionCallsStartedFrame):
            if self._turn is not None and not self._turn.complete:
                self._turn.tools_running += len(frame.function_calls)
                if len(self._tools_started) < 64:
                    for call in frame.function_calls:
                        self._tools_started[call.tool_call_id] = now
        elif isinstance(frame, FunctionCallResultFrame):
            self._on_tool_result(frame)
        elif isinstance(frame, MetricsFrame):
            self._on_metrics(frame)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._llm_responding, self._llm_interrupted = True, False
            self._withdrawn = False
            if self._turn is not None:
                self._turn.follow_up_expected = False
                self._turn.llm_done = False
        elif isinstance(frame, LLMFullResponseEndFrame):
            cancelled = self._llm_interrupted
            self._llm_responding, self._llm_interrupted = False, False
            if self._turn is not None:
                if not cancelled and not self._turn.complete and not self._withdrawn:
                    self._turn.llm_done_at = now
                if self._turn.tools_running or self._turn.follow_up_expected:
                    return  # the reply comes from the completion after the tool results
                self._turn.llm_done = True
                if not self._bot.speaking and self._turn.audio_out is None and not cancelled:
                    # A reply with nothing to say (empty text) is still a finished turn;
                    # a cancelled one is not a reply: the next completion answers.
                    failed = self._turn.error is not None
                    empty = not self._turn.bot_text.strip()
                    self._complete_if_done(force=empty and not failed)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot.started()
            if self._turn is not None and self._turn.audio_out is None and not self._turn.complete:
                self._turn.audio_out = now
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._audio.drained()  # the transport's queue ran dry
            if self._bot.stopped():
                self._on_speech_over()
        elif isinstance(frame, InterruptionFrame):
            # The transport drops what it had queued; nothing produced is left to play.
            self._llm_interrupted = self._llm_responding
            self._audio.drained()
            self._audio.forget_queued_reply()
            self._bot.dropped()
            turn = self._speaking_turn()
            if turn is not None:
                turn.interrupted = True
                self._finish(turn)
        self._update_idle()

    def _on_speech_over(self) -> None:
        """The bot went quiet with nothing more synthesized: what it was saying is over
        (a pause while synthesis runs late is a gap inside it, not its end)."""
        if self._greeting_pending and self._turn is None:
            self._greeting_pending = False
            self.greeting_done.set()
        self._complete_if_done()

    def _on_audio_produced(self, frame: TTSAudioRawFrame) -> None:
        """Audio on its way to the transport (past the speculative audio gate)."""
        turn, queued = self._turn, False
        if turn is not None and not turn.audio_released and not turn.complete:
            turn.audio_released = True
            queued = self._bot.speaking and turn.audio_out is None
        self._audio.produced(_seconds(frame), queued_reply_starts=queued)

    def _on_audio_written(self, frame: TTSAudioRawFrame, now: int) -> None:
        turn = self._turn
        if not self._audio.written(_seconds(frame)):
            return
        if turn is not None and turn.audio_out is None and not turn.complete:
            turn.audio_out = now

    def _on_tool_result(self, frame: FunctionCallResultFrame) -> None:
        if frame.function_name in self._ending_tools and not (
            isinstance(frame.result, dict) and "error" in frame.result
        ):
            self._call_ending = True
            self._update_idle()
        turn = self._turn
        if turn is None or turn.complete:
            return
        turn.tools_running = max(0, turn.tools_running - 1)
        turn.tool_calls.append(
            {"name": frame.function_name, "arguments": frame.arguments, "result": frame.result}
        )
        turn.tool_times.append((self._tools_started.pop(frame.tool_call_id, None), self._now))
        run_llm = frame.run_llm if frame.properties is None else frame.properties.run_llm
        if run_llm is False:
            if not turn.tools_running:
                turn.llm_done = True
                self._complete_if_done(force=not self._bot.speaking and turn.audio_out is None)
        else:
            turn.follow_up_expected = True
        self._update_idle()

    def _on_metrics(self, frame: MetricsFrame) -> None:
        """The LLM server's token counts for the turn's completion, when it reports them."""
        turn = self._turn
        if turn is None or turn.complete or self._withdrawn:
            return
        for data in frame.data:
            if isinstance(data, LLMUsageMetricsData):
                usage = data.value
                turn.count_usage(
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cache_read_input_tokens,
                )

    def _speaking_turn(self) -> TurnTrace | None:
        """The turn whose reply the caller is hearing, if any."""
        turn = self._turn
        return turn if turn is not None and not turn.complete and turn.audio_out else None

    def _complete_if_done(self, force: bool = False) -> None:
        turn = self._turn
        if turn is None or turn.complete:
            return
        if force:
            self._finish(turn)
            return
        if turn.llm_done and turn.audio_out is not None and self._bot.over:
            self._finish(turn)

    def _finish(self, turn: TurnTrace) -> None:
        turn.complete = True
        turn.ended = self._now
        self._tools_started.clear()
        logger.info(f"turn {json.dumps(turn.log_dict())}")
        if self._on_turn is not None:
            self._on_turn(turn)
