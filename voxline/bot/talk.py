"""``voxline talk``: one call, played from an audio clip through the full pipeline.

The clip is the caller. It is fed in real time after the greeting, the bot's
audio is recorded as the caller would hear it, and every turn is returned with
its transcript, the bot's words and the latency of each stage.
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
from voxline.engines.piper import PiperEngine
from voxline.models import PiperVoiceFiles, resolve_piper
from voxline.personas import Persona
from voxline.processors.latency import LatencyTracer
from voxline.processors.turn_trace import TurnTrace
from voxline.transports.audiofile import AudioFileTransport
from voxline.transports.levels import is_voiced

CALLER_VOICE = "en_US-joe-medium"


class TalkTimeoutError(TimeoutError):
    """The call did not settle in time after the caller finished speaking."""


@dataclass
class TalkResult:
    """What one ``talk`` call produced."""

    persona: str
    greeting: str
    turns: list[TurnTrace]
    audio: np.ndarray
    sample_rate: int
    llm_server_pids: list[int]
    context: list[dict] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)
    bot_frames: list[tuple[float, float]] = field(default_factory=list)
    caller_voiced: list[float] = field(default_factory=list)
    """``context``: the call's LLM context at the end (the persona's prompt first).
    ``spoken``: every chunk of text the bot's audio was written for, heard or not.
    ``bot_frames``: each bot audio frame played, (start, duration) in seconds, and
    ``caller_voiced``: when each voiced caller frame was sent, both on the call's clock
    (the timeline of ``audio``)."""

    def bot_quiet_from(self, moment: float, quiet_secs: float = 0.7) -> float | None:
        """When the bot's audio, after ``moment`` (seconds on the call's clock), first
        went quiet for ``quiet_secs``: the end of what it was saying then.

        A pause between the bot's sentences is shorter than the default 0.7 s; the
        silence after an interruption, before the reply, is longer.
        """
        frame = self.sample_rate // 50
        first = max(0, int(moment * 50))
        frames = self.audio.size // frame
        needed = max(1, round(quiet_secs * 50))
        run = 0
        for index in range(first, frames):
            if is_voiced(self.audio[index * frame : (index + 1) * frame]):
                run = 0
            else:
                run += 1
                if run == needed:
                    return (index - needed + 1) / 50
        return None


def synthesize_caller(text: str) -> tuple[np.ndarray, int]:
    """Speak ``text`` with the packaged Piper voice, as a caller's clip."""
    files = resolve_piper(CALLER_VOICE)
    assert isinstance(files, PiperVoiceFiles)
    engine = PiperEngine(files.model, files.config)
    try:
        pcm = np.frombuffer(engine.synthesize_all(text), dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0, engine.sample_rate
    finally:
        engine.close()


async def talk(
    persona: Persona,
    runtime: Runtime,
    audio: np.ndarray,
    sample_rate: int,
    *,
    timeout: float = 120.0,
    barge_in: np.ndarray | None = None,
    barge_in_after_secs: float = 1.0,
    over_greeting_after_secs: float | None = None,
    facts: dict[str, str] | None = None,
) -> TalkResult:
    """Run one call whose caller says ``audio``; return the turns and the bot's audio.

    With ``barge_in`` (more words, at ``sample_rate``), the caller says them over the
    reply once ``barge_in_after_secs`` of it have played. The caller waits for the
    greeting to end before speaking, or, with ``over_greeting_after_secs``, starts
    once that much of it has played. ``facts`` are what a phone or browser call would
    tell the bot about itself (caller number, time).

    Raises:
        TalkTimeoutError: the conversation did not finish within ``timeout`` seconds
            of the caller's clip ending.
    """
    await runtime.prepare(persona)
    out_rate = runtime.piper(persona).sample_rate if persona.tts.engine == "piper" else ORPHEUS_RATE
    transport = AudioFileTransport(
        audio,
        sample_rate,
        params=TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=STT_SAMPLE_RATE,
            audio_out_sample_rate=out_rate,
        ),
        tail_secs=persona.turn.stop_secs + 1.0,
    )
    events = runtime.calls.open(CallInfo(persona=persona.name, transport="talk"))
    tracer = LatencyTracer(speech_end_at=transport.speech_end_at, on_turn=events.turn_finished)
    call = build_call(
        persona, runtime, transport, tracer=tracer, out_sample_rate=out_rate, facts=facts
    )
    events.attach(call.worker, tracer)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(call.worker)
    with events.log_context():  # the call's tasks carry its id in their log lines
        run_task = asyncio.create_task(runner.run())

    async def converse() -> None:
        if over_greeting_after_secs is not None:
            await transport.wait_played(over_greeting_after_secs)
        elif persona.greeting:
            await tracer.greeting_done.wait()
        transport.caller_may_speak.set()
        await transport.caller_finished.wait()
        if barge_in is not None:
            # Counted from the reply's start: some of it may have played in the clip's tail.
            await asyncio.wait_for(
                transport.wait_played(transport.played_at_clip_end + barge_in_after_secs),
                timeout=timeout,
            )
            transport.say(barge_in)
            await transport.caller_finished.wait()
        try:
            await asyncio.wait_for(tracer.idle.wait(), timeout=timeout)
        except TimeoutError:
            raise TalkTimeoutError(
                f"the bot did not finish answering within {timeout:.0f} s of the caller's last word"
            ) from None

    script = asyncio.create_task(converse())
    try:
        done, _ = await asyncio.wait({script, run_task}, return_when=asyncio.FIRST_COMPLETED)
        if script in done:
            script.result()
            await call.worker.stop_when_done()
        await run_task
    except BaseException:
        await runner.cancel()
        raise
    finally:
        script.cancel()
        await asyncio.gather(script, run_task, return_exceptions=True)
        events.end()
    return TalkResult(
        persona=persona.name,
        greeting=persona.greeting or "",
        turns=list(tracer.turns),
        audio=transport.recording(),
        sample_rate=out_rate,
        llm_server_pids=runtime.llm.pids,
        context=list(call.context.get_messages()),
        spoken=list(transport.output().gate.spoken),
        bot_frames=transport.played_frames(),
        caller_voiced=transport.caller_voiced_secs(),
    )
