"""How long after the caller's last word the turn-taker hears the pause (issue 14).

Silero VAD holds "speech" for a while after the last word, and pipecat's stream
resampler holds the phone's audio back before the VAD even hears it. This feeds
the benchmark callers' espeak-ng voices (not the Piper voice of the tests) down
the phone path (16 kHz -> 8 kHz µ-law in 20 ms frames -> up to 16 kHz, one
frame at a time, with pipecat's SoX stream resampler or the Twilio
serializer's :class:`~voxline.transports.upsampler.StreamUpsampler`) into the
call's real :class:`~voxline.processors.turn.TurnTaker` with the shared Silero
model and the default turn settings, and prints, per utterance, how long after
the caller's last voiced frame was sent (louder than -45 dBFS, the benchmarks'
definition of voiced) two things happened:

* **VAD quiet - early_secs**: the VAD's own (last) quiet state, minus the ``early_secs``
  it waits: where the pause was dated before the turn-taker timed loudness (the
  VAD's hangover);
* **pause - early_secs**: when the turn-taker pushed its (last) pause frame, minus
  ``early_secs``: how late the pause is dated now.

Zero means the pause is heard exactly ``early_secs`` after the last word.

    .venv/bin/python -m benchmarks.vad_hangover            # phone path, both resamplers
    .venv/bin/python -m benchmarks.vad_hangover --wideband # 16 kHz frames, no resampling
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipecat.audio.utils import create_stream_resampler  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams, VADState  # noqa: E402
from pipecat.frames.frames import InputAudioRawFrame, VADUserStoppedSpeakingFrame  # noqa: E402
from pipecat.tests.utils import run_test  # noqa: E402

from benchmarks.common import over_the_phone, p50, p95  # noqa: E402
from benchmarks.turn_latency import VOICES  # noqa: E402
from voxline.bench.callers import UTTERANCES, espeak, silence  # noqa: E402
from voxline.personas.turn_settings import TurnSettings  # noqa: E402
from voxline.processors.turn import TurnTaker, TurnTakingSettings  # noqa: E402
from voxline.processors.vad import SharedSileroVADAnalyzer  # noqa: E402
from voxline.transports.levels import is_voiced  # noqa: E402
from voxline.transports.upsampler import StreamUpsampler  # noqa: E402

RATE = 16_000
FRAME_SECS = 0.02


class RecordingVAD(SharedSileroVADAnalyzer):
    """The shared Silero analyzer, remembering the last frame at which it turned quiet."""

    def __init__(self, params: VADParams):
        super().__init__(sample_rate=RATE, params=params)
        self.frames = 0
        self.quiet_at: int | None = None
        self._was = VADState.QUIET

    async def analyze_audio(self, buffer: bytes) -> VADState:
        state = await super().analyze_audio(buffer)
        self.frames += 1
        if state == VADState.QUIET and self._was != VADState.QUIET:
            self.quiet_at = self.frames
        self._was = state
        return state


def wideband_frames(audio: np.ndarray) -> list[tuple[bytes, bool]]:
    pcm = (audio * 32767).astype(np.int16)
    size = int(RATE * FRAME_SECS)
    return [
        (pcm[i : i + size].tobytes(), is_voiced(pcm[i : i + size]))
        for i in range(0, pcm.size - size + 1, size)
    ]


async def no_transcript(audio: np.ndarray) -> str:
    return ""


async def one(frames: list[tuple[bytes, bool]], turn: TurnSettings) -> tuple[float, float]:
    """(VAD quiet - early_secs, pause - early_secs) after the last voiced frame, seconds."""
    vad = RecordingVAD(
        VADParams(
            confidence=turn.vad_confidence,
            start_secs=turn.vad_start_secs,
            stop_secs=turn.early_secs,
            min_volume=turn.min_volume,
        )
    )
    taker = TurnTaker(
        vad=vad,
        transcribe=no_transcript,
        end_of_turn=None,
        settings=TurnTakingSettings(early_secs=turn.early_secs, stop_secs=5.0, speculate=False),
    )
    audio_frames = [
        InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1) for pcm, _ in frames
    ]
    down, _ = await run_test(taker, frames_to_send=audio_frames)
    last_voiced = max(index for index, (_, voiced) in enumerate(frames) if voiced) + 1
    pause_at = None
    count = 0
    for frame in down:
        if isinstance(frame, InputAudioRawFrame):
            count += 1
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            pause_at = count + 1  # pushed while its frame was processed; the last one counts
    assert pause_at is not None and vad.quiet_at is not None, "no pause heard"
    early = turn.early_secs
    return (
        (vad.quiet_at - last_voiced) * FRAME_SECS - early,
        (pause_at - last_voiced) * FRAME_SECS - early,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wideband", action="store_true", help="16 kHz frames, no phone line")
    args = parser.parse_args()
    turn = TurnSettings()
    tmp = Path(tempfile.mkdtemp(prefix="vad_hangover_"))
    paths = ["wideband"] if args.wideband else ["soxr", "upsampler"]
    late: dict[tuple[str, str], list[float]] = {}
    for index, utterance in enumerate(UTTERANCES):
        if utterance.paused:
            continue
        voice = VOICES[index % len(VOICES)]
        audio = np.concatenate([silence(0.5), espeak(utterance.first, voice, tmp), silence(1.0)])
        line = f"{index:>2} {' '.join(map(str, voice)):<18}"
        for path in paths:
            if path == "wideband":
                frames = wideband_frames(audio)
            else:
                resampler = create_stream_resampler() if path == "soxr" else StreamUpsampler()
                frames = await over_the_phone(audio, RATE, resampler)
            vad_late, pause_late = await one(frames, turn)
            late.setdefault((path, "vad"), []).append(vad_late * 1000)
            late.setdefault((path, "pause"), []).append(pause_late * 1000)
            line += f" | {path}: VAD {vad_late * 1000:>4.0f} ms, pause {pause_late * 1000:>4.0f} ms"
        print(line, flush=True)
    summary = " | ".join(
        f"{path} {what} p50={p50(values):.0f}ms p95={p95(values):.0f}ms"
        for (path, what), values in late.items()
    )
    count = len(next(iter(late.values())))
    print(
        f"vad_hangover ({count} utterances, early_secs={turn.early_secs}; "
        f"VAD: its quiet state - early_secs, pause: the turn-taker's): {summary}"
    )


if __name__ == "__main__":
    asyncio.run(main())
