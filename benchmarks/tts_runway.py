"""Does the voice stop in mid-reply? Whole-sentence chunks vs runway-aware chunks.

Replays multi-sentence replies as an LLM streams them (one word every ``--word-ms``,
several rates: the slower ones are what vLLM on a loaded CPU writes) through the
chunker and the shared Piper voice in a pipecat pipeline, once with later chunks cut
only at sentence ends (``runway_lead_ms: null``) and once with the persona defaults
(``speech_chars_per_sec: 20``, ``runway_lead_ms: 500``). Each reply starts with a short
clause and goes on with long sentences, the shape that runs out of audio.

Playback is simulated the way a phone plays a stream: each audio frame plays when it
arrives or when the audio before it has finished, whichever is later. A stall is a
frame that arrives ``--stall-ms`` (60) or more after the audio before it finished.
Prints, per word rate and mode: stalls per reply, the stalled time per reply
(p50/p95), how many chunks were cut inside a sentence, and the voice's speaking rate
in characters per second (the figure ``speech_chars_per_sec`` estimates).

    .venv/bin/python benchmarks/tts_runway.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipecat.frames.frames import (  # noqa: E402
    AggregatedTextFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402

from benchmarks.common import percentile  # noqa: E402
from tests.pipelines import RunningPipeline  # noqa: E402
from voxline.engines.piper import PiperEngine  # noqa: E402
from voxline.models import PiperVoiceFiles, resolve_piper  # noqa: E402
from voxline.processors.chunker import ChunkerProcessor  # noqa: E402
from voxline.processors.sentence_chunker import SENTENCE_END  # noqa: E402
from voxline.processors.tts import SharedPiperTTSService  # noqa: E402

REPLIES = [
    "Sure, let me check. Your last three payments were forty three dollars at the Green "
    "Grocer on Friday, twelve dollars at the cinema on Saturday and nine dollars for coffee "
    "on Sunday morning. Is there one of them you do not recognise?",
    "Of course. The branch on Main Street opens at nine in the morning on weekdays and "
    "closes at five in the afternoon, and on Saturdays it is open until noon for cash and "
    "card services only.",
    "I understand, that is frustrating. I have blocked the card ending in four eight two one "
    "so that nobody can use it, and a new card with a new number will reach your home "
    "address within five business days.",
    "Good question. The savings account pays four percent a year on balances up to ten "
    "thousand dollars and three percent above that, and the interest is paid into the "
    "account on the first day of every month.",
    "Right away. I have moved two hundred dollars from your checking account to your "
    "savings account, your new checking balance is one thousand and fifty dollars, and you "
    "will see the transfer in the app in a few minutes.",
    "No problem at all. To send money abroad you need the name of the bank, the account "
    "number and the international bank code of the person you are paying, and the fee is "
    "fifteen dollars for each transfer.",
]
MODES = {
    "whole sentences": {"runway_lead_ms": None},
    "runway-aware": {},  # the persona defaults
}


class ChunkLog(FrameProcessor):
    """Notes the chunks the chunker hands to TTS."""

    def __init__(self, chunks: list[str]) -> None:
        super().__init__()
        self.chunks = chunks

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, AggregatedTextFrame):
            self.chunks.append(frame.text)
        await self.push_frame(frame, direction)


class Playback(FrameProcessor):
    """Plays audio frames on a simulated clock and notes the stalls between them."""

    def __init__(self, stall_secs: float) -> None:
        super().__init__()
        self.stall_secs = stall_secs
        self.stalls: list[float] = []
        self.audio_secs = 0.0
        self.chunks: list[str] = []
        self.done = asyncio.Event()
        self._ends_at: float | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            now = time.perf_counter()
            duration = len(frame.audio) / 2 / frame.sample_rate / frame.num_channels
            if self._ends_at is not None and now - self._ends_at >= self.stall_secs:
                self.stalls.append(now - self._ends_at)
            self._ends_at = max(now, self._ends_at or now) + duration
            self.audio_secs += duration
        elif isinstance(frame, TTSStoppedFrame):
            self.done.set()  # pushed after the reply's last audio
        await self.push_frame(frame, direction)


@dataclass
class Result:
    stalls: list[int] = field(default_factory=list)
    stalled_ms: list[float] = field(default_factory=list)
    chunks: int = 0
    cut_in_sentence: int = 0
    chars_per_sec: list[float] = field(default_factory=list)


async def replay(
    voice: PiperEngine, reply: str, word_ms: float, mode: dict, stall_secs: float
) -> Playback:
    playback = Playback(stall_secs=stall_secs)
    chunker = ChunkerProcessor(**mode)
    tts = SharedPiperTTSService(engine=voice)
    async with RunningPipeline([chunker, ChunkLog(playback.chunks), tts, playback]) as run:
        await run.queue(LLMFullResponseStartFrame())
        for token in [piece for piece in reply.replace(" ", "\0 ").split("\0") if piece]:
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(word_ms / 1000)  # the LLM's generation rate
        await run.queue(LLMFullResponseEndFrame())
        await asyncio.wait_for(playback.done.wait(), 60)
    return playback


async def main(args: argparse.Namespace) -> None:
    files = resolve_piper("en_US-joe-medium")
    assert isinstance(files, PiperVoiceFiles)
    voice = PiperEngine(files.model, files.config)
    voice.warm_up()
    print(
        f"{len(REPLIES)} replies, Piper en_US-joe-medium, stall >= {args.stall_ms:g} ms; "
        "per reply: stalls, stalled ms p50/p95; chunks cut inside a sentence"
    )
    rates: list[float] = []
    for word_ms in args.word_ms:
        results = {name: Result() for name in MODES}
        for reply in REPLIES:
            for name, mode in MODES.items():  # interleaved: both see the same machine
                played = await replay(voice, reply, word_ms, mode, args.stall_ms / 1000)
                result = results[name]
                result.stalls.append(len(played.stalls))
                result.stalled_ms.append(1000 * sum(played.stalls))
                result.chunks += len(played.chunks)
                result.cut_in_sentence += sum(
                    not chunk.rstrip("\"')").endswith(tuple(SENTENCE_END))
                    for chunk in played.chunks
                )
                rates.append(len(reply) / played.audio_secs)
        for name, result in results.items():
            print(
                f"word every {word_ms:>4g} ms  {name:16} stalls/reply "
                f"{statistics.mean(result.stalls):.2f}  stalled ms p50 "
                f"{statistics.median(result.stalled_ms):.0f} p95 "
                f"{percentile(result.stalled_ms, 0.95):.0f}  cut in a sentence "
                f"{result.cut_in_sentence}/{result.chunks} chunks"
            )
    print(
        f"speaking rate: {statistics.median(rates):.1f} characters/s "
        f"(min {min(rates):.1f}, max {max(rates):.1f}, silences included)"
    )
    voice.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--word-ms", type=float, nargs="+", default=[60, 120, 180], help="ms between words"
    )
    parser.add_argument("--stall-ms", type=float, default=60.0)
    asyncio.run(main(parser.parse_args()))
