"""``voxline dial``: test a persona by phone without a phone.

Speaks Twilio's protocol to a voxline server (signed webhook, media stream,
marks, clear, stop), records what the caller heard, transcribes it with the
shared Whisper model and prints each turn's voice-to-voice latency as heard.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys

import numpy as np

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _transcribe_segments(heard: np.ndarray, cuts: list[float]) -> list[str]:
    """Whisper transcripts of the heard audio between the given times (seconds)."""
    import soxr

    from voxline.engines.whisper import SAMPLE_RATE, WhisperEngine
    from voxline.models import resolve_whisper
    from voxline.transports.caller_frames import RATE

    engine = WhisperEngine(resolve_whisper("tiny.en"))
    bounds = [0.0, *cuts, heard.size / RATE]
    texts = []
    for start, end in itertools.pairwise(bounds):
        piece = heard[int(start * RATE) : int(end * RATE)].astype(np.float32) / 32768.0
        piece = soxr.resample(piece, RATE, SAMPLE_RATE).astype(np.float32)
        texts.append(engine.transcribe_blocking(piece, language="en").text)
    return texts


def dial(args: argparse.Namespace) -> int:
    """Place one call and report it."""
    from voxline.bot.audio_input import AudioInputError, output_problem, read_caller_audio
    from voxline.transports.caller_frames import RATE
    from voxline.transports.dial_result import DialError
    from voxline.transports.twilio_caller import TwilioCaller

    auth_token = os.environ.get("TWILIO_AUTH_TOKEN", "")
    if not auth_token:
        print("voxline: error: set TWILIO_AUTH_TOKEN to the server's token", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output is not None and (problem := output_problem(args.output)) is not None:
        print(f"voxline: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.input is not None:
            audio, rate = read_caller_audio(args.input)
        else:
            from voxline.bot.talk import synthesize_caller

            audio, rate = synthesize_caller(args.say)
    except AudioInputError as exc:
        print(f"voxline: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    caller = TwilioCaller(
        args.url, auth_token=auth_token, webhook_url=args.webhook_url, number=args.number
    )
    try:
        result = asyncio.run(caller.call(audio, rate, dtmf=args.dtmf))
    except (DialError, OSError) as exc:
        print(f"voxline: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except TimeoutError:
        print("voxline: error: the call did not finish in time", file=sys.stderr)
        return EXIT_FAILURE

    if args.output is not None:
        import soundfile

        try:  # WAV whatever the file is called
            soundfile.write(str(args.output), result.heard, RATE, format="WAV", subtype="PCM_16")
        except (OSError, RuntimeError) as exc:
            print(f"voxline: error: cannot write {args.output}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    cuts = [turn.caller_end for turn in result.turns]
    texts = _transcribe_segments(result.heard, cuts) if result.heard.size else []
    greeting, replies = (texts[0], texts[1:]) if texts else ("", [])
    turns = [
        {"turn": i + 1, "bot_heard": replies[i] if i < len(replies) else "",
         "voice_to_voice_ms": turn.latency_ms}
        for i, turn in enumerate(result.turns)
    ]  # fmt: skip
    if args.json:
        document = {
            "call_sid": result.call_sid,
            "greeting_heard": greeting,
            "turns": turns,
            "clears": len(result.clear_times),
            "marks_echoed": result.marks_echoed,
        }
        print(json.dumps(document, indent=2))
    else:
        print(f"greeting heard: {greeting}")
        for turn in turns:
            latency = turn["voice_to_voice_ms"]
            shown = "-" if latency is None else f"{latency:.0f} ms"
            print(f"turn {turn['turn']}: heard {turn['bot_heard']!r}  voice-to-voice {shown}")
    return EXIT_OK
