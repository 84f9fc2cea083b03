"""Run one scenario as a real call on the shared engines of a Runtime.

The call is built exactly as ``voxline talk`` and the server build theirs
(:func:`voxline.bot.session.build_call`); only the transport is the scenario's
caller. Each turn waits for the bot to finish its reply (or, with
``barge_in_after``, for that much of it to play) before the caller acts. After the
call, the bot's audio is cut into the greeting and one reply per turn, by time;
:func:`listen` later transcribes each piece with the Runtime's shared Whisper: what
the caller heard. The suite listens once its calls are over (:mod:`voxline.scenarios.run`),
so transcribing replies never takes the cores from the calls being measured.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from voxline.bot.call_events import CallInfo
from voxline.bot.runtime import Runtime
from voxline.bot.session import STT_SAMPLE_RATE, build_call
from voxline.engines.orpheus import SAMPLE_RATE as ORPHEUS_RATE
from voxline.processors.latency import LatencyTracer
from voxline.scenarios.load import LoadedScenario
from voxline.scenarios.transport import (
    FixtureRunner,
    ScenarioCallControl,
    ScenarioTransport,
    ToolCall,
    ToolCallLog,
)
from voxline.scenarios.voices import CallerVoices
from voxline.tools.runner import ToolRunner

KEYS_REPLY_SECS = 8.0
"""How long the caller waits for an answer to keys it pressed before acting again."""


@dataclass
class TurnRun:
    """What happened in one scenario turn."""

    index: int
    caller_said: str
    """The caller's words as written (``say``), or the action (``dtmf 12#``, ...)."""
    started: float | None = None
    ended: float | None = None
    heard: str = ""
    """The bot's audio after this turn, transcribed: what the caller heard."""
    heard_secs: float = 0.0
    first_reply_ms: float | None = None
    """Caller's last voiced audio (or key) -> first voiced bot audio, as played."""
    tools: list[ToolCall] = field(default_factory=list)
    call_ended: bool = False
    transferred_to: list[str] = field(default_factory=list)
    reached: bool = True
    """False when the call had ended before this turn."""
    stages_ms: dict[str, float | None] = field(default_factory=dict)
    """The pipeline's own per-stage latencies of the turn (from its trace), if matched."""


@dataclass
class CallRun:
    """One scenario's call."""

    greeting_heard: str = ""
    turns: list[TurnRun] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    """(who, words) in order: ``bot`` as heard, ``caller`` as written."""
    error: str | None = None
    """The call could not run to its end (a timeout), if so."""
    context: list[dict] = field(default_factory=list)
    replies: list[np.ndarray] = field(default_factory=list)
    """The bot's audio not yet transcribed: the greeting, then each reached turn's reply
    (int16 at ``replies_rate``); :func:`listen` empties it."""
    replies_rate: int = 0

    @property
    def unheard_secs(self) -> float:
        """Seconds of the bot's audio waiting for :func:`listen`."""
        if not self.replies:
            return 0.0
        return sum(piece.size for piece in self.replies) / self.replies_rate


def _describe(turn) -> str:
    if turn.say:
        return turn.say
    if turn.audio:
        return f"(audio {turn.audio})"
    if turn.dtmf:
        return f"(presses {turn.dtmf})"
    return f"(silent {turn.silence:g} s)"


async def _transcribe(runtime: Runtime, loaded: LoadedScenario, audio: np.ndarray, rate: int):
    import soxr

    if audio.size < rate // 10:
        return ""
    samples = audio.astype(np.float32) / 32768.0
    if rate != STT_SAMPLE_RATE:
        samples = soxr.resample(samples, rate, STT_SAMPLE_RATE).astype(np.float32)
    whisper = runtime.whisper(loaded.persona)
    # Whisper decodes at most 2 minutes; a reply is seconds long.
    heard = await whisper.transcribe(
        samples[: 110 * STT_SAMPLE_RATE], language=loaded.persona.language
    )
    return heard.text.strip()


async def run_call(loaded: LoadedScenario, runtime: Runtime, voices: CallerVoices) -> CallRun:
    """Run ``loaded`` as one call; the result holds what was heard, called and measured.

    The persona must have been prepared on ``runtime`` and every ``say`` clip made.
    """
    persona, scenario = loaded.persona, loaded.scenario
    out_rate = runtime.piper(persona).sample_rate if persona.tts.engine == "piper" else ORPHEUS_RATE
    transport = ScenarioTransport(
        params=TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=STT_SAMPLE_RATE,
            audio_out_sample_rate=out_rate,
        )
    )
    events = runtime.calls.open(CallInfo(persona=persona.name, transport="talk"))
    tracer = LatencyTracer(speech_end_at=transport.speech_end_at, on_turn=events.turn_finished)
    control = ScenarioCallControl(
        persona.phrases.goodbye,
        transport,
        interruptible="goodbye" not in persona.turn.uninterruptible,
    )
    fixtures: dict[str, ToolRunner] = {
        name: FixtureRunner(ToolRunner(spec, base_dir), scenario.tool_results[name])
        for name, (spec, base_dir) in persona.tool_specs.items()
        if name in scenario.tool_results
    }
    call = build_call(
        persona,
        runtime,
        transport,
        tracer=tracer,
        out_sample_rate=out_rate,
        call_control=control,
        tool_runners=fixtures,
    )
    control.worker = call.worker
    tool_log = ToolCallLog()
    call.worker.add_observer(tool_log)
    events.attach(call.worker, tracer)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(call.worker)
    with events.log_context():
        run_task = asyncio.create_task(runner.run())
    result = CallRun()
    turns = [TurnRun(index, _describe(turn)) for index, turn in enumerate(scenario.turns)]
    tail = persona.turn.stop_secs + 1.0

    async def reply_done(since: float, keys: bool) -> None:
        """The bot has answered the caller's last action (or there was nothing to answer).

        After speech, the caller stays quiet for the turn's stop wait and a second (as
        ``voxline talk`` does), then waits for the call to be idle. Keys are no speech:
        the caller waits for the bot's first audio after them first.
        """
        if keys:
            # A keypad entry is no speech turn: the call's idle state says nothing about
            # it. The reply is the bot's audio after the keys, up to a second of quiet.
            try:
                await asyncio.wait_for(transport.wait_voiced_after(since), KEYS_REPLY_SECS)
            except TimeoutError:
                return  # no reply came: the turn's expectations will say so
            await transport.wait_quiet(1.0)
            return
        await asyncio.sleep(tail)  # the caller's silence after speaking
        await tracer.idle.wait()

    async def converse() -> None:
        await transport.started.wait()
        reply_from = 0.0  # where the reply now playing started (the greeting: 0)
        for index, turn in enumerate(scenario.turns):
            run = turns[index]
            if turn.barge_in_after is not None:
                try:
                    await asyncio.wait_for(
                        transport.wait_played_since(reply_from, turn.barge_in_after),
                        timeout=scenario.timeout_secs,
                    )
                except TimeoutError:
                    raise TimeoutError(
                        f"turn {index + 1}: the bot did not play {turn.barge_in_after:g} s to "
                        f"speak over within {scenario.timeout_secs:g} s (timeout_secs)"
                    ) from None
            elif index == 0 and persona.greeting:
                await tracer.greeting_done.wait()
            if run_task.done() or (control.ended_at is not None and index > 0):
                run.reached = False
                continue
            if turn.dtmf:
                spoken = await transport.press(turn.dtmf)
            elif turn.silence:
                started = transport.clock_secs()
                await asyncio.sleep(turn.silence)  # the caller's silence is the scenario's
                now = transport.clock_secs()
                run.started, run.ended = started, now
                reply_from = started
                continue
            else:
                audio, rate = (
                    voices.clip(scenario.voice, turn.say) if turn.say else loaded.audio[index]
                )
                spoken = await transport.say(audio, rate)
            run.started, run.ended = spoken.started, spoken.ended
            reply_from = spoken.ended
            following = scenario.turns[index + 1] if index + 1 < len(scenario.turns) else None
            if following is not None and following.barge_in_after is not None:
                continue  # the next turn speaks over this reply
            wait = asyncio.ensure_future(reply_done(spoken.ended, keys=bool(turn.dtmf)))
            done, _ = await asyncio.wait(
                {wait, run_task}, timeout=scenario.timeout_secs, return_when="FIRST_COMPLETED"
            )
            wait.cancel()
            if not done:
                raise TimeoutError(
                    f"turn {index + 1}: the bot did not finish its reply within "
                    f"{scenario.timeout_secs:g} s (timeout_secs)"
                )

    script = asyncio.create_task(converse())
    try:
        done, _ = await asyncio.wait({script, run_task}, return_when=asyncio.FIRST_COMPLETED)
        if script in done:
            if (problem := script.exception()) is not None:
                result.error = str(problem) if isinstance(problem, TimeoutError) else repr(problem)
                await call.worker.cancel()
            else:
                await call.worker.stop_when_done()
        await asyncio.wait_for(run_task, timeout=scenario.timeout_secs)
    except BaseException:
        await runner.cancel()
        raise
    finally:
        script.cancel()
        await asyncio.gather(script, run_task, return_exceptions=True)
        events.end()
    if (partial := transport.partial_action()) is not None:
        # The call ended while the caller was still speaking (or pressing keys): that
        # turn was reached; it is the first one the script had not finished.
        unfinished = next((run for run in turns if run.started is None), None)
        if unfinished is not None:
            unfinished.started, unfinished.ended = partial.started, partial.ended
    await _summarise(loaded, runtime, transport, control, tool_log, tracer, turns, result)
    result.context = list(call.context.get_messages())
    return result


async def _summarise(loaded, runtime, transport, control, tool_log, tracer, turns, result) -> None:
    """Cut the bot's audio into the greeting and each turn's reply (kept for
    :func:`listen`); assign tool calls, hang-ups and transfers to the turn they followed."""
    rate = transport.out_sample_rate
    starts = [run.started for run in turns if run.started is not None]
    greeting_end = starts[0] if starts else None
    bounds: list[tuple[float, float | None]] = []
    reached = [run for run in turns if run.started is not None]
    for position, run in enumerate(reached):
        following = reached[position + 1].started if position + 1 < len(reached) else None
        bounds.append((run.started, following))
    pieces = [transport.heard(0.0, greeting_end)] + [
        transport.heard(start, end) for start, end in bounds
    ]
    result.replies, result.replies_rate = pieces, rate
    trace_turns = list(tracer.turns)
    for (start, end), run, piece in zip(bounds, reached, pieces[1:], strict=True):
        run.heard_secs = round(piece.size / rate, 2)
        first = transport.first_voiced_after(run.ended)
        if first is not None and (end is None or first < end):
            run.first_reply_ms = round((first - run.ended) * 1000, 1)

        def inside(moment: float, start=start, end=end) -> bool:
            return moment >= start and (end is None or moment < end)

        run.tools = [call for call in tool_log.calls if inside(call.at)]
        run.call_ended = control.ended_at is not None and inside(control.ended_at)
        run.transferred_to = [number for at, number in control.transferred if inside(at)]
        for trace in trace_turns:
            moment = trace.speech_end or trace.committed or trace.transcribed
            if moment is not None and inside(moment / 1e9):
                run.stages_ms = trace.latencies_ms()
                break
    for run in turns:
        if run.started is None and run.reached:
            run.reached = False  # the call ended while the caller waited to act
    result.turns = turns


async def listen(
    loaded: LoadedScenario, runtime: Runtime, call: CallRun, pieces: asyncio.Semaphore
) -> None:
    """Transcribe the bot's audio of a finished call: the greeting and replies as heard.

    Fills ``greeting_heard``, each reached turn's ``heard`` and the transcript of both
    sides, and frees the audio. ``pieces`` bounds the pieces in Whisper's queue at once.
    """
    if not call.replies:
        return

    async def hear(piece: np.ndarray) -> str:
        async with pieces:
            return await _transcribe(runtime, loaded, piece, call.replies_rate)

    heard = await asyncio.gather(*(hear(piece) for piece in call.replies))
    call.replies = []
    call.greeting_heard = heard[0]
    if loaded.persona.greeting:
        call.transcript.append(("bot", heard[0]))
    reached = iter(heard[1:])
    for run in call.turns:
        if run.started is None:
            continue
        run.heard = next(reached)
        call.transcript.append(("caller", run.caller_said))
        if run.heard:
            call.transcript.append(("bot", run.heard))
