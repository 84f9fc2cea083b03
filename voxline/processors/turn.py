"""Turn-taking: when the caller's turn ends, speculative replies, and barge-in.

One processor per call sits right after the input transport and owns the
caller's side of the conversation:

* **Utterances.** Silero VAD (pipecat's analyzer, per call) cuts speech; the
  audio of the whole turn is kept, including pauses, so words said after a
  pause join the same utterance.
* **Speculation.** At ``early_secs`` of silence the utterance so far goes to
  the shared Whisper engine and its transcript to the LLM as pipecat's
  ``EagerTranscriptionFrame``: the reply is generated against a provisional
  context, synthesized, and held by the audio gate before the output transport.
  If the caller speaks again first, an ``EagerEndOfTurnCancelFrame`` stops the
  LLM request (closing its stream), drops the TTS work and the held audio.
* **Commit.** The turn ends when the shared end-of-turn model judges it
  complete or Whisper heard a question, after ``unsure_stop_secs`` of silence when
  the model judged it unfinished but not by much (``model_unsure_threshold``),
  after ``sentence_end_secs`` of silence when Whisper heard a finished sentence,
  or when the silence reaches ``stop_secs`` whatever the model says.
  The final transcript is the speculative one (same audio), so pipecat's
  ``EagerUserTurnStopStrategy`` keeps the prepared reply instead of computing
  it again, and its ``UserStoppedSpeakingFrame`` opens the gate: the prepared
  audio plays at once.
* **Barge-in.** Caller speech over the bot interrupts it once it lasts or carries
  words enough, and the bot's audio is held while that is decided
  (:mod:`~voxline.processors.barge_in`). A caller who goes on after the commit,
  before a sound of its reply, withdraws that reply the same way, but the turn is
  timed as the rest of the one committed, not as speech over the bot.

When the utterance goes to Whisper, and which of its audio, is in
:mod:`~voxline.processors.turn_transcript`; the verdicts and the commit in
:mod:`~voxline.processors.turn_end`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import (
    FrameDirection,
    FrameProcessor,
    FrameProcessorSetup,
)
from pipecat.utils.time import time_now_iso8601

from voxline.processors.barge_in import BargeIn
from voxline.processors.frames import (
    SpeculationCancelledFrame,
    SpeculationStartedFrame,
    TranscriptionSkippedFrame,
)
from voxline.processors.speech_level import MAX_HANGOVER_SECS, MIN_STOPPING_SECS, SpeechLevel
from voxline.processors.turn_end import TurnEnd
from voxline.processors.turn_prefill import TurnPrefill
from voxline.processors.turn_state import (
    SAMPLE_RATE,
    BotAudioHold,
    CallerTurn,
    EndOfTurnDecider,
    IdleCheck,
    Transcriber,
    TurnCounters,
    TurnTakingSettings,
)
from voxline.processors.turn_transcript import TurnTranscript
from voxline.processors.turn_words import ends_sentence

__all__ = ["BotAudioHold", "TurnCounters", "TurnTaker", "TurnTakingSettings"]

PRE_ROLL_SECS = 0.3
"""Audio kept from before the VAD confirmed speech: the onset of the first word."""
REACTION_SECS = 0.2
"""Speech that starts this soon after the reply's first sound is the caller going on, not
an answer to the reply: no one reacts to a sound that fast, let alone starts speaking in
answer to it, and ``onset`` is dated from the VAD's confirmation, which can come tens of
milliseconds after the speech began. (A CI run: the caller went on 350 ms into
a pause the model had judged the turn's end, the reply sounded at 372 ms, and the rest of
the caller's question was timed as a barge-in, with the longer pause that follows one.
At 0.1 s it still happened in one run in four: the speech began ~30 ms after the reply's
first sound, and the VAD's dating put it 107-111 ms after.)"""


class TurnTaker(FrameProcessor, BargeIn, TurnEnd, TurnTranscript, TurnPrefill):
    """Decides when the caller's turn ends and when the caller interrupts the bot.

    Args:
        vad: the call's VAD analyzer (Silero); its ``stop_secs`` is replaced by
            ``early_secs``: its quiet state is the start of a pause.
        transcribe: the shared Whisper engine, as ``await transcribe(audio) -> text``.
        transcriber_idle: whether that engine has nothing to do, or None: a pause goes
            to Whisper sooner when it is idle
            (:mod:`~voxline.processors.turn_transcript`).
        reply_engines_idle: whether the engines of the call's replies (its LLM server and
            voice) have nothing to do, or None: the caller's words go to the LLM only at
            the pause (:mod:`~voxline.processors.turn_prefill`).
        end_of_turn: asks the shared end-of-turn engine about the utterance, or
            None to end turns on ``stop_secs`` of silence alone.
        settings: the persona's turn settings.
        counters: where the process counts speculations, commits and barge-ins.
        hold: the output transport's hold on the bot's audio, or None (the bot talks on
            until a barge-in is decided).
        not_understood: the line the bot says when the caller spoke for at least
            :data:`~voxline.processors.turn_end.NOT_UNDERSTOOD_SECS` and Whisper made
            no words of it, or None to stay silent (the caller then hears nothing until
            the idle line).
        forward_audio: pass the caller's audio frames on downstream. Off by default:
            every processor after this one works on transcripts and turn frames, and
            each 20 ms frame costs every processor and observer of the pipeline a hop
            of the event loop (a third of the server's CPU with eight quiet calls;
            docs/cpu.md). A pipeline with a processor that needs the caller's audio
            after this one (a recorder) turns it on.
    """

    def __init__(
        self,
        *,
        vad: VADAnalyzer,
        transcribe: Transcriber,
        transcriber_idle: IdleCheck | None = None,
        reply_engines_idle: IdleCheck | None = None,
        end_of_turn: EndOfTurnDecider | None,
        settings: TurnTakingSettings,
        counters: TurnCounters | None = None,
        hold: BotAudioHold | None = None,
        not_understood: Callable[[], Frame] | None = None,
        forward_audio: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._forward_audio = forward_audio
        self._hold = hold
        self._not_understood = not_understood
        self._counters = counters or TurnCounters()
        self._vad = vad
        self._transcribe = transcribe
        self._transcriber_idle = transcriber_idle
        self._llm_idle = reply_engines_idle
        self._end_of_turn = end_of_turn
        self._settings = settings
        self._vad_state = VADState.QUIET
        self._pre_roll: deque[bytes] = deque()
        self._pre_roll_bytes = 0
        self._turn: CallerTurn | None = None
        self._level = SpeechLevel()
        self._bot_speaking = False
        self._carried_text = ""  # overheard words that join the next turn
        self._reply_pending_since: float | None = None
        self._reply_started_at: float | None = None  # a committed reply's first sound
        self._committed_spoken_secs = 0.0  # the speech of the turn committed last
        self._last_voice_at = float("-inf")
        self._tasks: set[asyncio.Task] = set()

    # --- frames ---------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Turn caller audio into turn events; track whether the bot is speaking."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self._on_audio(frame)
            if self._forward_audio:
                await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._drop_turn()
            await self.push_frame(frame, direction)
        else:
            if isinstance(frame, BotStartedSpeakingFrame):
                self._bot_speaking = True
                replying = self._reply_pending_since is not None
                self._reply_started_at = time.monotonic() if replying else None
                self._reply_pending_since = None
            elif isinstance(frame, BotStoppedSpeakingFrame):
                self._bot_speaking = False
            await self.push_frame(frame, direction)

    async def setup(self, setup: FrameProcessorSetup):
        """Give the VAD the pipeline's input rate."""
        await super().setup(setup)
        self._vad.set_sample_rate(setup.audio_in_sample_rate)

    async def cleanup(self):
        """Stop the call's turn work and release the VAD's thread."""
        await self._drop_turn()
        await self._vad.cleanup()
        await super().cleanup()

    def heard_caller_within(self, secs: float) -> bool:
        """Whether the caller made a sound (or is mid-turn) in the last ``secs`` seconds."""
        return self._turn is not None or time.monotonic() - self._last_voice_at < secs

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        state = await self._vad.analyze_audio(frame.audio)
        previous, self._vad_state = self._vad_state, state
        if state != VADState.QUIET:
            self._last_voice_at = time.monotonic()
        turn = self._turn
        if turn is None:
            self._keep_pre_roll(frame.audio)
            if state == VADState.QUIET:
                self._level.note_noise(frame.audio)
            if state == VADState.SPEAKING and previous != VADState.SPEAKING:
                await self._open_turn()
            return
        turn.audio.extend(frame.audio)
        secs = len(frame.audio) / 2 / SAMPLE_RATE
        turn.quiet_secs = 0.0 if self._level.is_speech(frame.audio) else turn.quiet_secs + secs
        if not turn.paused:
            await self._head_start(turn, state, secs)
            if state == VADState.SPEAKING:
                self._maybe_prefill(turn)
        silent = state in (VADState.QUIET, VADState.STOPPING)
        if state == VADState.SPEAKING and previous != VADState.SPEAKING and turn.paused:
            await self._resume(turn)
        elif silent and not turn.paused and self._pause_heard(turn, state):
            await self._pause(turn)
        elif silent and turn.paused:
            turn.silence_secs += secs
            if turn.committing:
                pass
            elif turn.silence_secs + 1e-6 >= self._settings.stop_secs:
                self._spawn(self._commit(turn, "silence"))
            elif turn.complete_reason and turn.silence_secs >= turn.complete_after_secs:
                self._spawn(self._commit(turn, turn.complete_reason))
        if state in (VADState.SPEAKING, VADState.STOPPING):
            await self._check_barge_in(turn)

    def _silence_so_far(self, turn: CallerTurn) -> float:
        """The pause before it is confirmed: from the caller's last loud frame, once the
        VAD has let go of the speech, but no further back than its hangover
        (:mod:`~voxline.processors.speech_level`)."""
        if turn.stopping_secs < MIN_STOPPING_SECS:
            return turn.stopping_secs  # one doubtful window is not the VAD letting go
        return max(turn.stopping_secs, min(turn.quiet_secs, turn.stopping_secs + MAX_HANGOVER_SECS))

    def _pause_heard(self, turn: CallerTurn, state: VADState) -> bool:
        """Whether ``early_secs`` of silence are heard: by the VAD, or counted from the
        last loud frame while the VAD is stopping."""
        if state == VADState.QUIET:
            return True
        return self._silence_so_far(turn) + 1e-6 >= self._settings.early_secs

    def _keep_pre_roll(self, audio: bytes) -> None:
        self._pre_roll.append(audio)
        self._pre_roll_bytes += len(audio)
        limit = int(PRE_ROLL_SECS * SAMPLE_RATE) * 2
        while self._pre_roll and self._pre_roll_bytes - len(self._pre_roll[0]) >= limit:
            self._pre_roll_bytes -= len(self._pre_roll.popleft())

    # --- the turn's life --------------------------------------------------------

    async def _open_turn(self) -> None:
        start_secs = self._vad.params.start_secs
        onset = time.monotonic() - start_secs
        turn = CallerTurn(onset=onset, stretch_onset=onset, over_bot=self._bot_busy())
        if turn.over_bot and self._began_before_reply(onset):
            # The caller goes on after the commit, before a sound of its reply: the rest
            # of the turn they were in, if it carries words (module doc).
            turn.before_reply = True
            turn.continued_secs = self._committed_spoken_secs
        for piece in self._pre_roll:
            turn.audio.extend(piece)
        self._pre_roll.clear()
        self._pre_roll_bytes = 0
        self._turn = turn
        logger.debug(f"{self}: caller started speaking{' over the bot' if turn.over_bot else ''}")
        self._hold_bot(turn)
        await self.push_frame(VADUserStartedSpeakingFrame(start_secs=start_secs))

    def _began_before_reply(self, onset: float) -> bool:
        """Whether speech that began at ``onset`` was no answer to the committed reply:
        the reply has made no sound yet, or its first sound came less than
        :data:`REACTION_SECS` before the speech (the caller heard at most that much of
        it, and the frames the VAD took to confirm the speech, before the hold)."""
        if not self._bot_speaking:
            return self._reply_pending_since is not None
        started = self._reply_started_at
        return started is not None and onset < started + REACTION_SECS

    async def _pause(self, turn: CallerTurn) -> None:
        """``early_secs`` of silence: decide, and speculate, while the caller may go on."""
        turn.paused = True
        turn.silence_secs = max(self._settings.early_secs, self._silence_so_far(turn))
        turn.stopping_secs = 0.0
        # stop_secs dates the end of the words for the turn's trace.
        await self.push_frame(VADUserStoppedSpeakingFrame(stop_secs=turn.silence_secs))
        if self._reads_transcript_at_pause or turn.over_bot:
            self._start_transcript(turn)
        if self._end_of_turn is not None:
            turn.decision = self._spawn(self._decide(turn, turn.generation))
        self._spawn(self._after_pause(turn, turn.generation))

    async def _resume(self, turn: CallerTurn) -> None:
        """The caller spoke again before the commit: everything speculative is void."""
        turn.paused = False
        turn.silence_secs = 0.0
        turn.complete_reason, turn.complete_after_secs = "", 0.0
        turn.generation += 1
        turn.stretch_onset = time.monotonic() - self._vad.params.start_secs
        self._hold_bot(turn)
        await self.push_frame(VADUserStartedSpeakingFrame(start_secs=self._vad.params.start_secs))
        for task in (turn.decision, turn.transcript):
            if task is not None and not task.done():
                task.cancel()
        turn.decision = None
        if turn.eager_text is None:
            # The pause's utterance is settled without a reply of its own.
            await self.push_frame(TranscriptionSkippedFrame(reason="resumed"))
        turn.transcript = None
        if turn.eager_text is not None:
            turn.eager_text = None
            await self._cancel_speculation("resumed")

    async def _cancel_speculation(self, reason: str) -> None:
        logger.debug(f"{self}: speculation cancelled ({reason})")
        self._counters.speculations_cancelled += 1
        await self.push_frame(SpeculationCancelledFrame(reason=reason))
        await self.push_frame(EagerEndOfTurnCancelFrame())

    @property
    def _reads_transcript_at_pause(self) -> bool:
        settings = self._settings
        return (
            settings.speculate
            or settings.question_ends_turn
            or settings.sentence_end_secs is not None
        )

    async def _after_pause(self, turn: CallerTurn, generation: int) -> None:
        """Interrupt the bot if the words call for it, then speculate on them."""
        if turn.words_check is not None:
            # A check of the words said over the bot goes first: an interruption
            # after the speculation would drop it.
            await asyncio.gather(turn.words_check, return_exceptions=True)
        if turn.transcript is None:
            return  # nothing starts before the commit
        text = await self._awaited_transcript(turn)
        if text is None:
            self._release_bot(turn)
        if text is None or self._turn is not turn or turn.generation != generation:
            return
        if self._settings.question_ends_turn and text.rstrip().endswith("?"):
            # Whisper heard a question: the turn is complete whatever the model said.
            self._complete(turn, generation, "question")
        elif self._settings.sentence_end_secs is not None and ends_sentence(text):
            # A finished statement: complete after a short pause, whatever the model said.
            after = self._settings.sentence_end_secs
            self._complete(turn, generation, "sentence", after)
        if turn.over_bot and not turn.interrupted_bot and self._bot_busy():
            if self._overheard(turn, text):
                self._release_bot(turn)
                return  # a backchannel: the bot goes on; the commit settles it
            if not self._settings.allow_interruptions:
                return  # the bot finishes its line; the reply follows it
            await self._interrupt(turn, "words")
        self._release_bot(turn)
        if self._settings.speculate and not turn.committing:
            await self._speculate(turn, text)

    async def _speculate(self, turn: CallerTurn, text: str) -> None:
        """Send the words so far to the LLM while the turn may still go on."""
        if not text:
            return
        text = self._with_carried(text)
        await self._open_aggregator_turn(turn)
        turn.eager_text = text
        self._counters.speculations += 1
        await self.push_frame(SpeculationStartedFrame(text=text))
        await self.push_frame(EagerTranscriptionFrame(text, "", time_now_iso8601()))

    # --- tasks ----------------------------------------------------------------

    def _spawn(self, coroutine) -> asyncio.Task:
        task = self.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _drop_turn(self) -> None:
        if self._turn is not None:
            self._turn.dropped = True
            self._release_bot(self._turn)
        self._turn = None
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            await self.cancel_task(task)
