"""How loud a frame of audio is: the one definition of "voiced" for every transport.

Voice-to-voice latency is measured from the caller's last voiced frame to the
bot's first, so ``talk``'s audio-file caller and the Twilio-protocol caller must
agree on what voiced means.
"""

from __future__ import annotations

import numpy as np

# A frame louder than about -45 dBFS counts as speech.
VOICED_RMS = 32768 * 10 ** (-45 / 20)


def is_voiced(samples: np.ndarray) -> bool:
    """Whether a frame of 16-bit samples is loud enough to be speech."""
    if not samples.size:
        return False
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > VOICED_RMS
