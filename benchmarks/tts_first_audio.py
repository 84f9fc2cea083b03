"""From the LLM's first token to the first audio frame: sentence-only vs clause-aware chunking.

Replays 20 replies as an LLM streams them (one word every --token-ms) through the
chunker and the shared Piper voice in a pipecat pipeline, once with sentence-only
chunking (the first chunk waits for a sentence end) and once with voxline's
clause-aware chunker for each ``--min-first-words`` (a clause boundary once the reply
has that many words, or whatever whole words exist after 250 ms; the persona default
is printed as such). Prints p50/p95 of first-token-to-first-audio for each, how many
replies' audio ran out before the next audio came and the longest such wait (a short
first chunk must not leave the caller waiting for the next), and the ratio
sentence-only / persona default, all measured in the same run.

    .venv/bin/python benchmarks/tts_first_audio.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipecat.frames.frames import (  # noqa: E402
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402

from benchmarks.common import percentile  # noqa: E402
from tests.pipelines import RunningPipeline  # noqa: E402
from voxline.engines.piper import PiperEngine  # noqa: E402
from voxline.models import PiperVoiceFiles, resolve_piper  # noqa: E402
from voxline.personas.schema import ChunkingSettings  # noqa: E402
from voxline.processors.chunker import ChunkerProcessor  # noqa: E402
from voxline.processors.tts import SharedPiperTTSService  # noqa: E402

REPLIES = [
    "Sure, I can help with that, your balance is four thousand two hundred dollars today.",
    "Of course, let me check the branch hours for you, we open at nine on weekdays.",
    "I'm sorry to hear that, I have blocked the card and a new one is on its way.",
    "Yes, you can transfer money abroad, the fee is fifteen dollars for each transfer.",
    "Thanks for waiting, I found two payments to that shop on the twentieth of November.",
    "Good question, the savings rate is four percent and it is paid every month.",
    "No problem at all, I will connect you to an agent who can review the request.",
    "Let me see, your last payment was forty three dollars at the Green Grocer on Friday.",
    "Certainly, a new card usually arrives within five business days of the request.",
    "Right away, I have updated your address, you will get a confirmation by mail.",
    "I understand, for security I need the last four digits of your card and your birthday.",
    "Happy to help, the branch on Main Street is open on Saturday mornings until noon.",
    "That's correct, there is no monthly fee on the checking account if you keep it active.",
    "One moment please, I am looking at the transactions from the last two weeks now.",
    "Unfortunately I can't give investment advice, but a specialist can call you back.",
    "Great, the transfer of two hundred dollars to your savings account is done now.",
    "Just to confirm, you want to close the old card ending in four eight two one.",
    "You're welcome, is there anything else I can help you with on your account today?",
    "I see the problem, the payment was declined because the card had expired last month.",
    "Absolutely, I can send you the statement for October to your registered email address.",
]


class FirstAudio(FrameProcessor):
    """Notes when the first audio came, and plays the audio as a speaker would, to time
    any wait for the next audio inside the reply."""

    def __init__(self) -> None:
        super().__init__()
        self.first: float | None = None
        self.got = asyncio.Event()
        self.heard_until = 0.0  # when the audio so far has played
        self.gap = 0.0  # silence heard inside the reply, waiting for its next audio

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            now = time.perf_counter()
            if self.first is None:
                self.first = now
                self.got.set()
            if self.heard_until and now > self.heard_until:
                self.gap += now - self.heard_until
            start = max(now, self.heard_until)
            self.heard_until = start + len(frame.audio) / 2 / frame.sample_rate
        await self.push_frame(frame, direction)


async def first_audio_ms(
    voice: PiperEngine, reply: str, min_first_words: int | None, token_ms: float
) -> tuple[float, float]:
    """(first token -> first audio, ms of silence waiting for more audio) for one reply;
    ``min_first_words`` None waits for a whole sentence."""
    probe = FirstAudio()
    chunker = (
        ChunkerProcessor(min_first_words=min_first_words)
        if min_first_words is not None
        else ChunkerProcessor(min_first_words=10_000, max_wait_ms=5000)
    )
    async with RunningPipeline([chunker, SharedPiperTTSService(engine=voice), probe]) as run:
        await run.queue(LLMFullResponseStartFrame())
        first_token = time.perf_counter()
        for token in [piece for piece in reply.replace(" ", "\0 ").split("\0") if piece]:
            await run.queue(LLMTextFrame(token))
            await asyncio.sleep(token_ms / 1000)  # the LLM's generation rate
        await run.queue(LLMFullResponseEndFrame())
        await asyncio.wait_for(probe.got.wait(), 30)
    # The voice's worker may still be finishing this reply's last sentence: let it, so
    # the next measurement does not queue behind it.
    async for _ in voice.synthesize("Done."):
        pass
    assert probe.first is not None
    return 1000 * (probe.first - first_token), 1000 * probe.gap


async def main(args: argparse.Namespace) -> None:
    files = resolve_piper("en_US-joe-medium")
    assert isinstance(files, PiperVoiceFiles)
    voice = PiperEngine(files.model, files.config)
    voice.warm_up()
    default = ChunkingSettings().min_first_words
    modes: list[int | None] = [None, *args.min_first_words]
    results: dict[int | None, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for reply in REPLIES:
        for mode in modes:
            results[mode].append(await first_audio_ms(voice, reply, mode, args.token_ms))
    print(f"{len(REPLIES)} replies, one word every {args.token_ms:g} ms, Piper en_US-joe-medium")
    for mode in modes:
        firsts = [first for first, _ in results[mode]]
        gaps = [gap for _, gap in results[mode]]
        name = "sentence-only" if mode is None else f"clause-aware, {mode} words"
        name += " (default)" if mode == default else ""
        print(
            f"{name:32} first token -> first audio: p50 {statistics.median(firsts):.0f} ms, "
            f"p95 {percentile(firsts, 0.95):.0f} ms; waiting for the next audio: "
            f"{sum(gap > 1 for gap in gaps)} of {len(gaps)} replies, "
            f"max {max(gaps):.0f} ms"
        )
    if default in results:
        ratio = statistics.median(first for first, _ in results[None]) / statistics.median(
            first for first, _ in results[default]
        )
        print(f"ratio={ratio:.2f} (sentence-only / clause-aware with the default, p50)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--token-ms", type=float, default=30.0, help="ms between LLM words")
    parser.add_argument(
        "--min-first-words", type=int, nargs="+", default=[4, 2, 1], help="clause-aware modes"
    )
    asyncio.run(main(parser.parse_args()))
