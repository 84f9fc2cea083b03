"""The shared end-of-turn engine: one Smart Turn v3.2 ONNX session for all calls.

A fixed VAD silence is wrong both ways: too long after a finished question, too
short for a caller who pauses mid-sentence (docs/architecture.md). An end-of-turn
model listens to the last seconds of the caller's audio and says whether the
turn sounds finished. pipecat ships Smart Turn v3.2 for CPU (an 8 MB int8
Whisper-tiny encoder with a linear head) but loads one session per call; voxline
loads one :class:`onnxruntime.InferenceSession` and queues the decisions of all
calls through a :class:`~voxline.engines.batcher.MicroBatcher`, which runs them in
worker threads so the event loop never waits for the model.

The preprocessing follows pipecat 1.14 exactly (``LocalSmartTurnAnalyzerV3.
_predict_endpoint`` and ``pipecat/audio/turn/smart_turn/_whisper_features.py``,
itself vendored from ``transformers.WhisperFeatureExtractor``): keep the last 8 s
of 16 kHz audio, zero-pad at the start, normalise the waveform to zero mean and
unit variance, take an 80-band Slaney log-Mel spectrogram (400-point FFT, hop 160)
and clamp it to 8 decades. It is re-implemented here in numpy because ``engines/``
never imports pipecat. The model's graph ends in a sigmoid: its output is already
the probability that the turn is complete.

No pipecat imports here: engines are usable and benchmarkable on their own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from voxline.engines.batcher import BatchRecord, MicroBatcher
from voxline.engines.samples import validate_audio

SAMPLE_RATE = 16_000
WINDOW_SECS = 8
WINDOW_SAMPLES = WINDOW_SECS * SAMPLE_RATE
MIN_AUDIO_SECS = 0.1
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 800
INPUT_NAME = "input_features"
_MEL_FLOOR = 1e-10
_NORM_EPS = 1e-7


class TurnModelError(RuntimeError):
    """The end-of-turn model file is missing, corrupt or not a Smart Turn model."""


@dataclass(frozen=True)
class TurnDecision:
    """Whether one caller's turn sounds finished.

    Attributes:
        complete: ``probability`` is above the threshold.
        probability: the model's probability that the turn is complete, 0..1.
        run_secs: wall time of the batch that decided it (features and model run).
        wait_secs: how long the request queued before its batch started.
    """

    complete: bool
    probability: float
    run_secs: float
    wait_secs: float


@dataclass(frozen=True)
class _Request:
    samples: np.ndarray
    threshold: float
    enqueued_at: float = field(default_factory=time.perf_counter)


def _hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.atleast_1d(np.asarray(freq, dtype=np.float64))
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hertz_to_mel`."""
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return freq


def _mel_filterbank() -> np.ndarray:
    """Slaney-normalised triangular filters, shape ``(N_FFT // 2 + 1, N_MELS)``."""
    mel_edges = np.linspace(
        _hertz_to_mel(np.array([0.0]))[0], _hertz_to_mel(np.array([SAMPLE_RATE / 2]))[0], N_MELS + 2
    )
    edges = _mel_to_hertz(mel_edges)
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    widths = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (edges[2 : N_MELS + 2] - edges[:N_MELS]))[None, :]
    return filters


_MEL_FILTERS_T = _mel_filterbank().T.copy()  # (N_MELS, bins)
_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window


def fit_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of ``audio``, zero-padded at the start when shorter."""
    if audio.size >= WINDOW_SAMPLES:
        return audio[-WINDOW_SAMPLES:]
    return np.pad(audio, (WINDOW_SAMPLES - audio.size, 0))


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """Whisper log-Mel features of one 8 s window, as Smart Turn v3 was trained on.

    Args:
        audio: 1-D 16 kHz samples; padded at the end or cut to 8 s (callers pass
            :func:`fit_window` output, which is exactly 8 s).

    Returns:
        float32 array of shape ``(80, 800)``, roughly in [-1, 1].
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.size < WINDOW_SAMPLES:
        x = np.pad(x, (0, WINDOW_SAMPLES - x.size))
    x = x[:WINDOW_SAMPLES]
    # Normalised in float32 before the spectrogram, as the reference does.
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (frames, bins)
    mel = np.maximum(_MEL_FLOOR, _MEL_FILTERS_T @ power.T)
    log_spec = np.log10(mel)[:, :-1]  # the reference drops the trailing frame
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class EndOfTurnEngine:
    """One Smart Turn ONNX session deciding end of turn for every call.

    Args:
        model_path: the Smart Turn v3 ``.onnx`` file (see
            :func:`voxline.models.resolve_turn_model`).
        threshold: default probability above which a turn is complete (pipecat: 0.5).
        threads: ONNX Runtime intra-op threads per model run.
        max_batch: the most decisions in one model run. On a CPU with one thread
            a batch of 4 costs 4 single runs (benchmarks/turn_model.py), so the default is 1.
        max_wait_ms: how long a decision may wait for companions before it runs.
        max_queue: decisions waiting beyond which new ones are refused (overload).
        workers: model runs that may execute at once (worker threads).

    Raises:
        TurnModelError: the file is missing, is not ONNX, or does not take
            ``input_features`` of shape ``[batch, 80, 800]`` and give one
            probability per item.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        threshold: float = 0.5,
        threads: int = 1,
        max_batch: int = 1,
        max_wait_ms: float = 2.0,
        max_queue: int = 64,
        workers: int = 1,
    ):
        _check_threshold(threshold)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.model_path = Path(model_path).expanduser()
        self.threshold = threshold
        self.threads = threads
        self._session = self._load(self.model_path, threads)
        self._batcher: MicroBatcher[_Request, TurnDecision] = MicroBatcher(
            self._run_batch,
            name="turn-model",
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            workers=workers,
        )

    @staticmethod
    def _load(path: Path, threads: int):  # -> onnxruntime.InferenceSession
        """Open the session and prove it is a Smart Turn model with one run on silence."""
        import onnxruntime as ort

        if not path.is_file():
            raise TurnModelError(f"end-of-turn model file not found: {path}")
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise TurnModelError(
                f"end-of-turn model {path} is not a loadable ONNX file: {_one_line(error)}"
            ) from None
        inputs = session.get_inputs()
        if (
            len(inputs) != 1
            or inputs[0].name != INPUT_NAME
            or list(inputs[0].shape)[1:] != [N_MELS, N_FRAMES]
        ):
            found = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs) or "none"
            raise TurnModelError(
                f"end-of-turn model {path} is not a Smart Turn v3 model: it takes {found}, "
                f"expected {INPUT_NAME}[batch, {N_MELS}, {N_FRAMES}]"
            )
        try:
            (out,) = session.run(None, {INPUT_NAME: np.zeros((1, N_MELS, N_FRAMES), np.float32)})
        except Exception as error:
            raise TurnModelError(
                f"end-of-turn model {path} failed on a test input: {_one_line(error)}"
            ) from None
        out = np.asarray(out)
        if out.shape != (1, 1) or not 0.0 <= float(out[0, 0]) <= 1.0:
            raise TurnModelError(
                f"end-of-turn model {path} is not a Smart Turn v3 model: it returned shape "
                f"{out.shape} instead of one probability per item"
            )
        return session

    @property
    def batch_records(self) -> Sequence[BatchRecord]:
        """Size, queue wait and run time of recent batches."""
        return self._batcher.records

    @property
    def queued(self) -> int:
        """Decisions waiting for a batch."""
        return self._batcher.queued

    async def decide(self, audio: np.ndarray, *, threshold: float | None = None) -> TurnDecision:
        """Judge whether the caller's turn is complete from its audio so far.

        Args:
            audio: float32 mono 16 kHz samples in [-1, 1]; the last 8 s are used.
            threshold: this call's probability threshold; the engine's by default.

        Raises:
            ValueError: the audio is not 1-D finite float samples or is shorter than 0.1 s.
            voxline.engines.batcher.Overloaded: too many decisions are queued.
            voxline.engines.batcher.BatcherClosed: the engine is closed.
        """
        return await self._batcher.submit(self._prepare(audio, threshold))

    def decide_blocking(self, audio: np.ndarray, *, threshold: float | None = None) -> TurnDecision:
        """Decide in the calling thread, outside any batch (tests, benchmarks)."""
        return self._run_batch([self._prepare(audio, threshold)])[0]

    def _prepare(self, audio: np.ndarray, threshold: float | None) -> _Request:
        samples = validate_audio(audio)
        if samples.size < MIN_AUDIO_SECS * SAMPLE_RATE:
            raise ValueError(
                f"end-of-turn audio of {samples.size / SAMPLE_RATE:.3f} s is shorter than "
                f"{MIN_AUDIO_SECS} s"
            )
        if threshold is None:
            threshold = self.threshold
        _check_threshold(threshold)
        return _Request(fit_window(samples), threshold)

    def _run_batch(self, requests: list[_Request]) -> list[TurnDecision]:
        """Features and one model run for a whole batch (worker thread)."""
        started = time.perf_counter()
        features = np.stack([log_mel_features(r.samples) for r in requests])
        (probabilities,) = self._session.run(None, {INPUT_NAME: features})
        run_secs = time.perf_counter() - started
        return [
            TurnDecision(
                complete=float(p) > r.threshold,
                probability=float(p),
                run_secs=run_secs,
                wait_secs=started - r.enqueued_at,
            )
            for r, p in zip(requests, np.asarray(probabilities).reshape(-1), strict=True)
        ]

    async def close(self) -> None:
        """Refuse new decisions, let running batches finish, release the worker threads."""
        await self._batcher.close()

    async def aclose(self) -> None:
        """The same as :meth:`close`."""
        await self.close()


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
