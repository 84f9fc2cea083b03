"""Whisper's shortest encoder window on the phone path: word error rate and time per utterance.

Whisper pads every input to a 30 s window and the encoder's cost follows the window, not
the speech. voxline pads an utterance to the next 5 s step, at least ``min_window_secs``.
This decodes the same phone utterances with each window and prints the word error rate,
the utterances that came back empty, the model time per utterance, and how many windows
were decoded a second time in the 30 s window because the short one looped or said a
phrase twice ("Can you help me? Can you help me?", which short windows do on short clips).

The utterances are the ones ``voxline bench`` and ``benchmarks/burst_calls.py`` callers
say (20 questions, some with a pause in mid-sentence) in all eight of their espeak-ng voices
(espeak-ng is deterministic, so every run hears the same audio; no test uses these voices),
and, apart, the words before each mid-sentence pause alone, as the turn-taker sends them
to Whisper when the caller pauses,
taken down the phone path as ``voxline serve`` receives them: the Twilio-protocol caller's
8 kHz µ-law frames, decoded and raised to 16 kHz frame by frame as the Twilio serializer does.
One engine, one worker, one thread, nothing else running: the figures are the model's.

    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.stt_window            # 15 10 30
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.stt_window --windows 15 10 5
    flock /tmp/voxline-heavy.lock .venv/bin/python -m benchmarks.stt_window --show-empty
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import over_the_phone  # noqa: E402
from tests.speech import normalize  # noqa: E402
from voxline.bench.callers import UTTERANCES, VOICES, Utterance, caller_clip  # noqa: E402
from voxline.engines.whisper import SAMPLE_RATE, WhisperEngine  # noqa: E402
from voxline.models import resolve_whisper  # noqa: E402
from voxline.transports.upsampler import StreamUpsampler  # noqa: E402


def as_served(audio: np.ndarray) -> np.ndarray:
    """``audio`` (16 kHz) as ``voxline serve`` hands it to Whisper from a phone call."""
    frames = asyncio.run(over_the_phone(audio, SAMPLE_RATE, StreamUpsampler()))
    pcm = b"".join(frame for frame, _ in frames)
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768


def heard_with(
    engine: WhisperEngine, clips: list[tuple[str, np.ndarray]]
) -> tuple[float, list[str]]:
    """The word error rate over ``clips`` and what was heard of each."""
    references = [normalize(text) for text, _ in clips]
    heard = [engine.transcribe_blocking(audio).text for _, audio in clips]
    return float(jiwer.wer(references, [normalize(text) for text in heard])), heard


def empty(heard: list[str]) -> int:
    return sum(not normalize(text) for text in heard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[15, 10, 30])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument(
        "--show-empty",
        action="store_true",
        help="print the utterances some window heard no words in, with every window's text",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        spoken = [(voice, utterance) for voice in VOICES for utterance in UTTERANCES]
        clips = [
            (utterance.text, as_served(caller_clip(utterance, voice, Path(scratch))))
            for voice, utterance in spoken
        ]
        fragments = [
            (
                utterance.first,
                as_served(caller_clip(Utterance(utterance.first), voice, Path(scratch))),
            )
            for voice, utterance in spoken
            if utterance.paused
        ]
    model = resolve_whisper(args.model)
    results: dict[int, tuple[float, float]] = {}
    heard_by_window: dict[int, list[str]] = {}
    for window in args.windows:
        engine = WhisperEngine(model, cpu_threads=1, num_workers=1, min_window_secs=window)
        engine.warm_up()
        started = time.perf_counter()
        error, heard = heard_with(engine, clips)
        per_utterance = (time.perf_counter() - started) / len(clips)
        fragment_error, fragments_heard = heard_with(engine, fragments)
        results[window] = (error, per_utterance)
        heard_by_window[window] = heard
        print(
            f"min_window_secs {window:>2}: {len(clips)} phone utterances, {len(VOICES)} "
            f"espeak-ng voices: WER {error:.3f}, empty {empty(heard)}, "
            f"{per_utterance * 1000:.0f} ms each; {len(fragments)} words before a pause: "
            f"WER {fragment_error:.3f}, empty {empty(fragments_heard)}; "
            f"decoded again {engine.decoded_again}",
            flush=True,
        )
    if args.show_empty:
        for index, (voice, utterance) in enumerate(spoken):
            texts = {window: heard[index] for window, heard in heard_by_window.items()}
            if any(not normalize(text) for text in texts.values()):
                print(
                    f"  {voice[0]} {utterance.text!r}: "
                    + "; ".join(f"{window} s {text!r}" for window, text in texts.items())
                )
    first = args.windows[0]
    print(
        "stt_window: "
        + ", ".join(
            f"{window}s/{first}s time {results[window][1] / results[first][1]:.2f}x "
            f"WER {results[window][0] - results[first][0]:+.3f}"
            for window in args.windows[1:]
        )
    )


if __name__ == "__main__":
    main()
