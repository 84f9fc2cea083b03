"""Does Smart Turn's verdict depend on how much silence follows the words? (issue 14)

The turn-taker asks the end-of-turn model once the caller has been quiet for
``early_secs``, counted from the last loud frame (docs/architecture.md). This asks the
shared engine alone about espeak-ng speech (four voices, none of them Piper's) sent down
the phone path (the Twilio-protocol caller's µ-law frames, raised to 16 kHz as the Twilio
serializer does), followed by 0.2, 0.26, 0.32 and 0.4 s
of silence: the first halves of the callers' paused utterances (cut after words the
model should judge unfinished) and the unpaused, finished utterances. It prints, per
silence, how often each kind is judged complete (p >= 0.5) or at least "unsure"
(p >= 0.15, ``turn.model_unsure_threshold``) and the median probability.

    .venv/bin/python -m benchmarks.turn_model_silence
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import over_the_phone  # noqa: E402
from voxline.bench.callers import UTTERANCES, espeak, silence  # noqa: E402
from voxline.engines.turn_model import EndOfTurnEngine  # noqa: E402
from voxline.models import resolve_turn_model  # noqa: E402
from voxline.processors.turn_state import samples  # noqa: E402
from voxline.transports.upsampler import StreamUpsampler  # noqa: E402

VOICES = [
    ("en-us", 150, 50),
    ("en-gb-scotland", 140, 45),
    ("en-029", 165, 60),
    ("en-us-nyc+f4", 175, 40),
]
SILENCES = (0.2, 0.26, 0.32, 0.4)


async def main() -> None:
    engine = EndOfTurnEngine(resolve_turn_model("smart-turn-v3.2"))
    tmp = Path(tempfile.mkdtemp(prefix="turn_model_silence_"))
    unfinished: dict[float, list[float]] = {secs: [] for secs in SILENCES}
    finished: dict[float, list[float]] = {secs: [] for secs in SILENCES}
    for utterance in UTTERANCES:
        into = unfinished if utterance.paused else finished
        for voice in VOICES:
            words = espeak(utterance.first, voice, tmp)
            for secs in SILENCES:
                frames = await over_the_phone(
                    np.concatenate([words, silence(secs)]), 16_000, StreamUpsampler()
                )
                pcm = b"".join(frame for frame, _ in frames)
                into[secs].append(engine.decide_blocking(samples(pcm)).probability)
    for secs in SILENCES:
        mid, end = np.array(unfinished[secs]), np.array(finished[secs])
        print(
            f"turn_model_silence {secs:.2f}s: mid-sentence complete {np.mean(mid >= 0.5):.2f} "
            f"unsure+ {np.mean(mid >= 0.15):.2f} median p {np.median(mid):.3f} | finished "
            f"complete {np.mean(end >= 0.5):.2f} unsure+ {np.mean(end >= 0.15):.2f} "
            f"median p {np.median(end):.3f} (n={mid.size}/{end.size})"
        )


if __name__ == "__main__":
    asyncio.run(main())
