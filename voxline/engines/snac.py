"""The shared SNAC decoder: Orpheus code windows from every call, decoded in batches.

One SNAC 24 kHz model per process. Each Orpheus stream submits a window of codes
(28 codes = 4 frames while streaming; fewer at the end of a short utterance);
the :class:`~voxline.engines.batcher.MicroBatcher` gathers windows from all calls
and decodes those of one length as one batch in the engine's worker thread. On a
GPU that is where batching pays; on this CPU it at least does not lose
(benchmarks/snac_decode.py). No pipecat imports here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxline.engines.batcher import BatchRecord, MicroBatcher
from voxline.engines.orpheus import CODEBOOK_SIZE, CODES_PER_FRAME, frames_to_codebooks

SNAC_24KHZ_CONFIG: dict[str, Any] = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": CODEBOOK_SIZE,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "depthwise": True,
}
RANDOM_PREFIX = "random:"


def load_snac(model: str, *, device: str = "cpu") -> Any:
    """Load SNAC 24 kHz: a Hugging Face name or local directory, or ``random:SEED``.

    ``random:SEED`` builds the 24 kHz architecture with seeded random weights and
    its noise blocks off — deterministic, not speech: for tests and benchmarks on
    machines without the weights. Real weights: ``hubertsiuzdak/snac_24khz``.
    """
    import torch
    from snac import SNAC

    from voxline.models import ModelNotAvailableError, downloads_allowed

    local = model.startswith(RANDOM_PREFIX) or Path(model).is_dir()
    if not local and not downloads_allowed():
        raise ModelNotAvailableError(
            f"SNAC model {model!r} is not a local directory and downloads are off "
            "(VOXLINE_OFFLINE/HF_HUB_OFFLINE): set engines.snac.model to a directory "
            "holding the snac_24khz weights"
        )
    if model.startswith(RANDOM_PREFIX):
        seed = int(model.removeprefix(RANDOM_PREFIX) or 0)
        torch.manual_seed(seed)
        snac = SNAC(**SNAC_24KHZ_CONFIG, noise=False)
    else:
        snac = SNAC.from_pretrained(model)
    return snac.eval().to(device)


class SNACDecoder:
    """Decodes Orpheus code windows to 24 kHz audio, batched across calls.

    Args:
        model: a loaded SNAC model (see :func:`load_snac`).
        device: where the model lives (``cpu`` or ``cuda``).
        max_batch: windows decoded in one run.
        max_wait_ms: how long a window waits for companions.
        max_queue: windows waiting beyond which new ones are refused.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
    ):
        self._model = model
        self._device = device
        self._batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
            self._run_batch,
            name="snac",
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            workers=1,
        )

    @property
    def batch_records(self) -> Sequence[BatchRecord]:
        """Size, queue wait and run time of recent batches."""
        return self._batcher.records

    async def decode(self, codes: np.ndarray) -> np.ndarray:
        """Decode whole frames of codes (``[7 * F]``) to ``F * 2048`` float32 samples.

        Raises:
            ValueError: not whole frames, or codes outside 0..4095.
        """
        return await self._batcher.submit(check_codes(codes))

    def decode_blocking(self, codes: np.ndarray) -> np.ndarray:
        """Decode one window in the calling thread, outside any batch (tests, benchmarks)."""
        return self._run_batch([check_codes(codes)])[0]

    def decode_batch_blocking(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Decode windows of one length as a single batch in the calling thread."""
        return self._run_batch([check_codes(codes) for codes in windows])

    def _run_batch(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        results: dict[int, np.ndarray] = {}
        by_length: dict[int, list[int]] = {}
        for index, codes in enumerate(windows):
            by_length.setdefault(codes.size, []).append(index)
        with torch.inference_mode():
            for indexes in by_length.values():
                stacked = np.stack([windows[i] for i in indexes])
                codebooks = [
                    torch.from_numpy(np.ascontiguousarray(book)).to(self._device)
                    for book in frames_to_codebooks(stacked)
                ]
                audio = self._model.decode(codebooks)[:, 0, :].float().cpu().numpy()
                for row, index in enumerate(indexes):
                    results[index] = audio[row].astype(np.float32, copy=True)
        return [results[i] for i in range(len(windows))]

    def warm_up(self) -> None:
        """Decode one window so the first call does not pay for lazy initialisation."""
        self.decode_blocking(np.zeros(4 * CODES_PER_FRAME, dtype=np.int64))

    async def close(self) -> None:
        """Refuse new windows, let running batches finish, release the worker thread."""
        await self._batcher.close()


def check_codes(codes: np.ndarray) -> np.ndarray:
    """Whole frames of valid codes, as int64.

    Raises:
        ValueError: an empty array, a partial frame, or codes outside 0..4095.
    """
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.size == 0 or codes.size % CODES_PER_FRAME:
        raise ValueError(f"codes must be whole frames of {CODES_PER_FRAME}, got {codes.shape}")
    if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
        raise ValueError(f"codes must be 0..{CODEBOOK_SIZE - 1}")
    return codes.astype(np.int64, copy=False)
