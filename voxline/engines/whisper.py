"""The shared Whisper engine: one faster-whisper model that batches utterances across calls.

Stock pipecat loads a Whisper model per call and decodes each utterance alone;
voxline loads one model and decodes the utterances of all calls together. Each
utterance becomes one or more 30 s log-Mel windows; the windows of a whole batch
are stacked and go through CTranslate2's encoder and greedy ``generate`` as one
batch (faster-whisper's ``BatchedInferencePipeline`` only batches the chunks of a
single audio). The :class:`~voxline.engines.batcher.MicroBatcher` cuts the batches
and runs them in this engine's worker threads, never on the event loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from voxline.engines.batcher import BatchRecord, MicroBatcher
from voxline.engines.samples import validate_audio
from voxline.engines.whisper_loops import repeats_itself

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

SAMPLE_RATE = 16_000
MIN_SPEECH_SECS = 0.1
MAX_UTTERANCE_SECS = 120.0
FRAMES_PER_SEC = 100
FULL_WINDOW_FRAMES = 30 * FRAMES_PER_SEC
# Windows are padded to multiples of 5 s so that utterances of similar length share one
# encoder run; the encoder's cost grows with the window, not with the speech in it.
BUCKET_FRAMES = 5 * FRAMES_PER_SEC
# Speech rarely exceeds 4-5 tokens a second; a window that needs more is looping.
TOKENS_PER_SEC_BUDGET = 6
MIN_TOKEN_BUDGET = 12
# Below this RMS (about -50 dBFS) an utterance is silence: Whisper would hallucinate
# "Thank you." on it, so it is never decoded.
SILENCE_RMS = 10 ** (-50 / 20)
NO_SPEECH_PROB = 0.6
MIN_AVG_LOGPROB = -1.0
MAX_COMPRESSION_RATIO = 2.4
GPU_MAX_WAIT_MS = 10.0
"""How long an utterance waits for companions on a GPU, where a batch of eight costs
about one."""


@dataclass(frozen=True)
class Transcript:
    """The result of one utterance.

    Attributes:
        text: the recognised text; empty when the audio held no speech.
        audio_secs: length of the audio that was transcribed.
        run_secs: wall time of the model run that decoded it (0 when skipped).
        skipped: why no decoding was attempted or its result was dropped, if so.
        batch_size: utterances decoded in the same model run.
        queue_wait_secs: how long the utterance waited for its batch to start.
    """

    text: str
    audio_secs: float
    run_secs: float
    skipped: str | None = None
    batch_size: int = 0
    queue_wait_secs: float = 0.0


@dataclass
class _Window:
    """Up to 30 s of one utterance's log-Mel features, on its way through the model."""

    owner: int
    features: np.ndarray
    frames: int
    text: str = ""
    exhausted: bool = False
    budget: int = 0

    def __post_init__(self) -> None:
        seconds = self.features.shape[-1] / FRAMES_PER_SEC
        self.budget = int(TOKENS_PER_SEC_BUDGET * seconds) + MIN_TOKEN_BUDGET


@dataclass(frozen=True)
class _Utterance:
    samples: np.ndarray
    language: str | None
    beam_size: int
    queued_at: float = field(default_factory=time.perf_counter)


class WhisperEngine:
    """One faster-whisper model shared and batched across all calls.

    Args:
        model: a model directory or name accepted by faster-whisper (see
            :func:`voxline.models.resolve_whisper`).
        device: ``cpu``, ``cuda`` or ``auto``.
        compute_type: CTranslate2 compute type (``int8`` on CPU, ``float16`` on GPU).
        cpu_threads: intra-op threads per model run; on a 2-core CPU 1 thread with 2
            workers is faster than 2 threads (benchmarks/stt_concurrency.py).
        num_workers: model runs (batches) that may execute at once.
        max_batch: the most utterances in one model run.
        max_wait_ms: how long an utterance may wait for companions before its batch runs;
            None: 0 when the model runs on a CPU, where a batch costs about the sum of its
            utterances and waiting only delays the first (every lone turn by 10 ms), and
            :data:`GPU_MAX_WAIT_MS` on a GPU, where companions come almost free.
        max_queue: utterances waiting beyond which new ones are refused (overload).
        min_window_secs: the shortest encoder window. Whisper was trained on 30 s
            windows; a 10 s window decodes a phone utterance ~4.5x faster with the same
            accuracy (docs/benchmarks.md), 30 reproduces faster-whisper exactly.
        share_queue: share queued utterances among the workers instead of one worker
            taking them all (:class:`~voxline.engines.batcher.MicroBatcher`); None: on
            when the model runs on a CPU, where a batch costs about the sum of its
            utterances (on a GPU about one).
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        num_workers: int = 2,
        max_batch: int = 8,
        max_wait_ms: float | None = None,
        max_queue: int = 64,
        min_window_secs: int = 10,
        share_queue: bool | None = None,
    ):
        from faster_whisper import WhisperModel

        if not 1 <= min_window_secs <= 30:
            raise ValueError(f"min_window_secs must be 1..30, got {min_window_secs}")
        self._min_window_frames = min_window_secs * FRAMES_PER_SEC
        self._decoded_again = 0
        self._decoded_again_lock = threading.Lock()

        self.model_name = model
        self._model = WhisperModel(
            model,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        on_cpu = self._model.model.device == "cpu"
        self._batcher: MicroBatcher[_Utterance, Transcript] = MicroBatcher(
            self._run_batch,
            name="whisper",
            max_batch=max_batch,
            max_wait_ms=(0.0 if on_cpu else GPU_MAX_WAIT_MS)
            if max_wait_ms is None
            else max_wait_ms,
            max_queue=max_queue,
            workers=num_workers,
            share_queue=on_cpu if share_queue is None else share_queue,
        )

    @property
    def idle(self) -> bool:
        """Nothing is being decoded and nothing waits: a request now runs at once."""
        return self._batcher.idle

    @property
    def batch_records(self) -> Sequence[BatchRecord]:
        """Size, queue wait and run time of recent batches."""
        return self._batcher.records

    @property
    def decoded_again(self) -> int:
        """Windows decoded a second time in the 30 s window because the short one looped
        or repeated a phrase, since the engine loaded."""
        return self._decoded_again

    @property
    def refused(self) -> int:
        """Utterances refused because the queue was full (overload), since the engine loaded."""
        return self._batcher.refused

    async def transcribe(
        self, audio: np.ndarray, *, language: str | None = "en", beam_size: int = 1
    ) -> Transcript:
        """Transcribe one utterance of 16 kHz mono float32 audio in [-1, 1].

        Silence, noise-only audio and clips shorter than 0.1 s give an empty
        transcript instead of a Whisper hallucination. Audio longer than 30 s is
        decoded as consecutive 30 s windows.

        Raises:
            ValueError: the audio is not a 1-D array of finite float samples, or is
                longer than two minutes.
            voxline.engines.batcher.Overloaded: too many utterances are queued.
        """
        prepared = self._prepare(audio, language, beam_size)
        if isinstance(prepared, Transcript):
            return prepared
        return await self._batcher.submit(prepared)

    def transcribe_blocking(
        self, audio: np.ndarray, *, language: str | None = "en", beam_size: int = 1
    ) -> Transcript:
        """Transcribe one utterance in the calling thread, outside any batch (tools, tests)."""
        prepared = self._prepare(audio, language, beam_size)
        if isinstance(prepared, Transcript):
            return prepared
        return self._run_batch([prepared])[0]

    def _prepare(
        self, audio: np.ndarray, language: str | None, beam_size: int
    ) -> _Utterance | Transcript:
        """Validate an utterance; answer silence and clips too short to hold a word at once."""
        samples = validate_audio(audio)
        audio_secs = samples.size / SAMPLE_RATE
        if audio_secs > MAX_UTTERANCE_SECS:
            raise ValueError(
                f"utterance of {audio_secs:.0f} s is longer than the {MAX_UTTERANCE_SECS:.0f} s "
                "an utterance may last"
            )
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if audio_secs < MIN_SPEECH_SECS:
            return Transcript("", audio_secs, 0.0, skipped="too short")
        if float(np.sqrt(np.mean(samples**2))) < SILENCE_RMS:
            return Transcript("", audio_secs, 0.0, skipped="silence")
        if language is not None and not self._model.model.is_multilingual:
            language = "en"
        return _Utterance(samples, language, beam_size)

    def _run_batch(self, utterances: list[_Utterance]) -> list[Transcript]:
        """Decode utterances that share language and beam size together (worker thread)."""
        results: dict[int, Transcript] = {}
        batch_started = time.perf_counter()
        groups: dict[tuple[str | None, int], list[int]] = {}
        for index, utterance in enumerate(utterances):
            groups.setdefault((utterance.language, utterance.beam_size), []).append(index)
        for (language, beam_size), indexes in groups.items():
            started = time.perf_counter()
            texts = self._decode([utterances[i].samples for i in indexes], language, beam_size)
            run_secs = time.perf_counter() - started
            for index, text in zip(indexes, texts, strict=True):
                results[index] = Transcript(
                    text,
                    utterances[index].samples.size / SAMPLE_RATE,
                    run_secs,
                    skipped=None if text else "no speech",
                    batch_size=len(indexes),
                    queue_wait_secs=max(0.0, batch_started - utterances[index].queued_at),
                )
        return [results[i] for i in range(len(utterances))]

    def _decode(self, clips: list[np.ndarray], language: str | None, beam_size: int) -> list[str]:
        """Transcribe ``clips`` together: every window of every clip, batched by length."""
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language=language or "en",
        )
        windows = self._windows(clips)
        by_length: dict[int, list[_Window]] = {}
        for window in windows:
            by_length.setdefault(window.frames, []).append(window)
        for group in by_length.values():
            self._generate(group, tokenizer, language, beam_size)
        # A short window can make Whisper loop on its last words until the token budget
        # runs out, or say a phrase twice within it; such windows are decoded again in
        # the 30 s window it was trained on.
        looping = [
            w
            for w in windows
            if w.frames < FULL_WINDOW_FRAMES and (w.exhausted or repeats_itself(w.text))
        ]
        for window in looping:
            window.frames = FULL_WINDOW_FRAMES
        if looping:
            with self._decoded_again_lock:
                self._decoded_again += len(looping)
            self._generate(looping, tokenizer, language, beam_size)

        pieces: list[list[str]] = [[] for _ in clips]
        for window in windows:
            if window.text:
                pieces[window.owner].append(window.text)
        return [" ".join(parts) for parts in pieces]

    def _windows(self, clips: list[np.ndarray]) -> list[_Window]:
        """Cut each clip's log-Mel features into windows of at most 30 s."""
        extractor = self._model.feature_extractor
        windows = []
        for owner, clip in enumerate(clips):
            features = extractor(clip)
            # The extractor appends one hop of padding: 30 s of audio is one window.
            usable = max(1, features.shape[-1] - 1)
            for start in range(0, usable, FULL_WINDOW_FRAMES):
                chunk = features[:, start : min(start + FULL_WINDOW_FRAMES, usable)]
                windows.append(_Window(owner, chunk, self._window_frames(chunk.shape[-1])))
        return windows

    def _window_frames(self, frames: int) -> int:
        """The encoder length for ``frames`` of speech: a few fixed buckets, never < min."""
        bucket = math.ceil(frames / BUCKET_FRAMES) * BUCKET_FRAMES
        return min(FULL_WINDOW_FRAMES, max(self._min_window_frames, bucket))

    def _generate(
        self,
        windows: list[_Window],
        tokenizer: Tokenizer,
        language: str | None,
        beam_size: int,
    ) -> None:
        """Encode and decode windows of one length as a single batch; fill in their text."""
        import ctranslate2
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        model = self._model
        frames = windows[0].frames
        mels = windows[0].features.shape[0]
        batch = np.zeros((len(windows), mels, frames), np.float32)
        for row, window in enumerate(windows):
            batch[row, :, : window.features.shape[-1]] = window.features[:, :frames]
        encoded = model.model.encode(
            ctranslate2.StorageView.from_array(batch),
            to_cpu=model.model.device == "cuda" and len(model.model.device_index) > 1,
        )
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        prompts = [list(prompt) for _ in windows]
        if language is None and model.model.is_multilingual:
            language_index = prompt.index(tokenizer.language)
            for window_prompt, detected in zip(
                prompts, model.model.detect_language(encoded), strict=True
            ):
                window_prompt[language_index] = tokenizer.tokenizer.token_to_id(detected[0][0])
        room = model.max_length - len(prompt)
        for window in windows:
            window.budget = room if frames == FULL_WINDOW_FRAMES else min(room, window.budget)
        results = model.model.generate(
            encoded,
            prompts,
            beam_size=beam_size,
            max_length=len(prompt) + max(window.budget for window in windows),
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1]) or []),
            return_scores=True,
            return_no_speech_prob=True,
        )
        for window, result in zip(windows, results, strict=True):
            tokens = result.sequences_ids[0]
            window.exhausted = len(tokens) >= window.budget
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            text = tokenizer.decode(tokens).strip()
            if (
                (result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < MIN_AVG_LOGPROB)
                or (text and get_compression_ratio(text) > MAX_COMPRESSION_RATIO)
                # A hum gave ". . . . ." in tests: punctuation is no words.
                or not any(char.isalnum() for char in text)
            ):
                text = ""
            window.text = text

    def warm_up(self) -> None:
        """Decode one second of quiet noise so the first caller does not pay for lazy init."""
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        self._decode([noise], "en", 1)

    async def close(self) -> None:
        """Refuse new utterances, let running batches finish, release the worker threads."""
        await self._batcher.close()
