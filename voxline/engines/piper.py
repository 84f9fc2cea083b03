"""The shared Piper voice engine (the embedded default TTS).

A Piper voice is loaded once per process and shared by all calls. Piper
synthesizes a whole sentence per model run (no streaming inside one), so the
engine cuts every request into *pieces* (sentences, and long sentences at a
clause or word boundary) and runs each piece as one job on its own worker
threads, never on the event loop.

Jobs wait in one priority queue shared by all calls
(:class:`~voxline.engines.synthesis_queue.SynthesisQueue`): a reply's first chunk before
anything else, then the piece whose caller runs out of audio soonest. With two workers
or more, one is kept for first chunks; ``urgent_secs`` lets a later piece needed within
that time take it too. When four calls' replies start at once, their second sentences
are all needed within a second, and on one worker the last of them came after its
caller's first clause had played. The Runtime lends it to a piece needed within 500 ms
(``engines.piper.urgent_ms``): in eight-call bursts on two cores the callers heard half
as many stalls (docs/benchmarks.md, "Eight callers: the worker kept for first chunks
lent"); the engine alone never lends it unless told. With ``urgent_before_first`` such a
piece, or one already late, also goes before the first chunks waiting: a caller who is
listening would hear a gap, one who waits for a reply to begin only waits a moment longer
(docs/benchmarks.md, "Twelve callers: a sentence about to be missed before a first
chunk").

A running piece is never preempted, so a first chunk can still wait for the
pieces already running; cutting long sentences (``max_phonemes``) keeps each of
them short, and ``workers`` run several at once. The queue is bounded: a new
request finding ``max_queue`` jobs waiting is refused at once with
:class:`~voxline.engines.batcher.Overloaded`.

Batching sentences of several calls into one ONNX run is possible with Piper's
model (padded ``input`` with ``input_lengths``) but gives nothing on a CPU
(benchmarks/tts_concurrency.py, docs/cpu.md), so the engine runs one piece per
model run.

No pipecat imports here: engines are usable and benchmarkable on their own.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from voxline.engines.batcher import BatcherClosed, Overloaded
from voxline.engines.piper_pieces import split_first, split_phonemes, trim_leading_silence
from voxline.engines.synthesis_queue import FIRST, LATER, SynthesisQueue

__all__ = [
    "BatcherClosed",
    "Overloaded",
    "PiperEngine",
    "SynthesisRecord",
]

DEFAULT_MAX_PHONEMES = 100
"""A sentence longer than this many phonemes is cut (about 5 s of speech; 85 phonemes took
~0.3 s on one ONNX Runtime thread of the idle 2-core test CPU), so no single run holds a
worker for long."""
DEFAULT_BUSY_FIRST_PHONEMES: int | None = None
"""Off: in two bursts of eight callers, first words voiced alone (16 phonemes) gave earlier
first replies but stalls in the greetings and a question heard by nobody (docs/tts.md)."""
SLOW_FIRST_SECS = 1.0
"""A reply's first audio later than this after its request is logged (a caller waits)."""
LATE_PIECE_SECS = 0.06
"""A piece ready this much after its caller ran out of audio is logged at DEBUG (three
phone frames: a gap the caller hears)."""


@dataclass(frozen=True)
class SynthesisRecord:
    """One piece's trip through the engine, for tests, metrics and benchmarks.

    Attributes:
        label: who asked (the TTS service's name), as given to :meth:`PiperEngine.synthesize`.
        request: the request's arrival number.
        piece: the piece's index within its request.
        first: the request was the first chunk of a reply.
        phonemes: phonemes in the piece.
        queued_at, started_at, ended_at: ``time.perf_counter()`` when the piece was queued,
            when a worker started it and when its audio was ready.
        audio_secs: seconds of audio it made.
    """

    label: str
    request: int
    piece: int
    first: bool
    phonemes: int
    queued_at: float
    started_at: float
    ended_at: float
    audio_secs: float


class PiperEngine:
    """One loaded Piper voice shared by every call that uses it.

    Args:
        model: the voice's ``.onnx`` file.
        config: its ``.onnx.json`` file.
        use_cuda: run the ONNX model on a CUDA device.
        workers: pieces synthesized at once (threads owned by this engine, one shared
            ONNX session).
        threads: ONNX Runtime intra-op threads per model run; ``None`` keeps ONNX
            Runtime's default (one per physical core, spinning while idle).
        max_queue: jobs waiting beyond which a new request is refused (a request
            already speaking may queue its next piece until twice that).
        max_phonemes: sentences longer than this are cut at a clause or word
            boundary; ``None`` synthesizes whole sentences.
        busy_first_phonemes: when other pieces wait as a reply's first chunk starts,
            its first words (at most this many phonemes, cut at a clause or a word) are
            voiced alone, and the rest as the next piece: the caller hears the reply
            begin sooner, and the worker is free sooner for the next call's first
            words. ``None``: a first chunk is voiced whole whatever waits.
        prioritize_first: serve first chunks before other pieces; ``False`` is plain
            first-in, first-out.
        reserve_first: with two workers or more, keep one of them for first chunks: other
            pieces run on at most ``workers - 1`` workers at once, so a first chunk never
            waits for a long sentence to end. A worker of one thread produces speech ~13x
            faster than it is spoken (benchmarks/piper_speed.py), so the later pieces of a
            few calls lose nothing.
        urgent_secs: a later piece whose caller runs out of audio within this many
            seconds, and has not yet, may run on the worker kept for first chunks;
            ``None``: never.
        urgent_before_first: a later piece whose caller runs out of audio within
            ``urgent_secs``, or has already, goes before the first chunks waiting.
        history: how many :class:`SynthesisRecord` entries to keep.
    """

    def __init__(
        self,
        model: Path,
        config: Path,
        *,
        use_cuda: bool = False,
        workers: int = 1,
        threads: int | None = 1,
        max_queue: int = 64,
        max_phonemes: int | None = DEFAULT_MAX_PHONEMES,
        busy_first_phonemes: int | None = DEFAULT_BUSY_FIRST_PHONEMES,
        prioritize_first: bool = True,
        reserve_first: bool = True,
        urgent_secs: float | None = None,
        urgent_before_first: bool = False,
        history: int = 1024,
    ):
        from piper import PiperVoice
        from piper.config import PiperConfig

        if workers < 1 or max_queue < 1 or (threads is not None and threads < 1):
            raise ValueError(
                f"workers, max_queue and threads must be >= 1, got {workers=}, {max_queue=}, "
                f"{threads=}"
            )
        if max_phonemes is not None and max_phonemes < 8:
            raise ValueError(f"max_phonemes must be >= 8 or None, got {max_phonemes}")
        if busy_first_phonemes is not None and busy_first_phonemes < 8:
            raise ValueError(f"busy_first_phonemes must be >= 8 or None, got {busy_first_phonemes}")
        if urgent_secs is not None and urgent_secs < 0:
            raise ValueError(f"urgent_secs must be >= 0 or None, got {urgent_secs}")
        self.model_path = Path(model)
        self.workers = workers
        self.threads = threads
        self.max_phonemes = max_phonemes
        self.busy_first_phonemes = busy_first_phonemes
        self.prioritize_first = prioritize_first
        with open(config, encoding="utf-8") as config_file:
            voice_config = PiperConfig.from_dict(json.load(config_file))
        self._voice = PiperVoice(
            config=voice_config, session=_session(self.model_path, use_cuda, threads)
        )
        self.records: deque[SynthesisRecord] = deque(maxlen=history)
        self.synthesis_secs_total = 0.0
        """Seconds workers spent synthesizing, since the voice loaded (for metrics)."""
        self.audio_secs_total = 0.0
        """Seconds of audio synthesized, since the voice loaded (for metrics)."""
        self._phonemize_lock = threading.Lock()  # espeak-ng is not thread-safe
        self._totals_lock = threading.Lock()  # several workers add to the totals
        self._arrivals = itertools.count()
        self._queue = SynthesisQueue(
            name="piper",
            workers=workers,
            max_queue=max_queue,
            prioritize_first=prioritize_first,
            reserve_first=reserve_first,
            urgent_secs=urgent_secs,
            urgent_before_first=urgent_before_first,
        )

    @property
    def sample_rate(self) -> int:
        """The voice's native sample rate (22 050 Hz for the packaged voice)."""
        return int(self._voice.config.sample_rate)

    @property
    def queued(self) -> int:
        """Pieces waiting for a worker."""
        return self._queue.queued

    @property
    def busy(self) -> int:
        """Workers synthesizing now."""
        return self._queue.busy

    @property
    def idle(self) -> bool:
        """Nothing is being synthesized and nothing waits."""
        return self._queue.busy == 0 and self._queue.queued == 0

    @property
    def max_queue(self) -> int:
        """Pieces waiting beyond which a new request is refused."""
        return self._queue.max_queue

    @property
    def urgent_secs(self) -> float | None:
        """How soon a later piece must be needed to take the worker kept for first chunks."""
        return self._queue.urgent_secs

    @property
    def urgent_before_first(self) -> bool:
        """Whether such a piece goes before the first chunks waiting."""
        return self._queue.urgent_before_first

    @property
    def refused(self) -> int:
        """Requests refused because the queue was full (overload), for metrics."""
        return self._queue.refused

    async def synthesize(
        self,
        text: str,
        *,
        first: bool = False,
        label: str = "",
        needed_at: float | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield 16-bit mono PCM at :attr:`sample_rate`, one piece per sentence (or part).

        Args:
            text: what to say.
            first: this is the first chunk of a reply (or a greeting): its first piece
                goes before every queued piece that is not a first chunk's.
            label: names the caller in :attr:`records`.
            needed_at: when (``time.monotonic()``) the caller has heard the audio made
                before this text: pieces needed sooner go first. ``None``: after every
                piece that gave a time.

        Closing the iterator early (an interruption) drops its queued pieces; the
        piece in progress finishes in its worker.

        Raises:
            Overloaded: ``max_queue`` pieces are already waiting.
            BatcherClosed: the engine was closed.
        """
        request = next(self._arrivals)
        priority = FIRST if first and self.prioritize_first else LATER
        queued_at = time.perf_counter()
        needed = needed_at if needed_at is not None and self.prioritize_first else math.inf
        slack = needed - time.monotonic()

        def first_piece() -> tuple[bytes | None, list[list[str]]]:
            pieces = self._pieces(text)
            if not pieces:
                return None, []
            if first and self.busy_first_phonemes is not None and self._queue.queued:
                pieces[:1] = split_first(pieces[0], self.busy_first_phonemes)
            audio = self._run_piece(pieces[0], label, request, 0, first, queued_at, slack)
            if first:
                # Piper starts each sentence with 0-75 ms of silence (measured on the
                # packaged voice): the caller would hear it as latency.
                audio = trim_leading_silence(audio, self.sample_rate)
            return audio, pieces[1:]

        start = (priority, 0.0 if priority == FIRST else needed, request, 0)
        audio, rest = await self._queue.submit(start, first_piece, admission=True)
        if audio is not None:
            if first and needed == math.inf and self.prioritize_first:
                needed = time.monotonic()  # the caller starts hearing the reply now
            needed += len(audio) / 2 / self.sample_rate
            yield audio
        for index, phonemes in enumerate(rest, start=1):
            queued_at = time.perf_counter()
            slack = needed - time.monotonic()

            def piece(phonemes=phonemes, index=index, queued_at=queued_at, slack=slack) -> bytes:
                return self._run_piece(phonemes, label, request, index, first, queued_at, slack)

            audio = await self._queue.submit(
                (LATER, needed, request, index), piece, admission=False
            )
            needed += len(audio) / 2 / self.sample_rate
            yield audio

    def synthesize_all(self, text: str) -> bytes:
        """Synthesise ``text`` completely, blocking, whole sentences: for tools and tests."""
        with self._phonemize_lock:
            sentences = self._voice.phonemize(text)
        return b"".join(self._audio(phonemes) for phonemes in sentences if phonemes)

    def warm_up(self) -> None:
        """Synthesise a word so the first reply does not pay for ONNX session init."""
        self.synthesize_all("Hello.")

    def close(self) -> None:
        """Refuse new work, fail queued pieces, let running ones finish, stop the workers."""
        self._queue.close()

    def _pieces(self, text: str) -> list[list[str]]:
        with self._phonemize_lock:
            sentences = self._voice.phonemize(text)
        return [
            piece
            for sentence in sentences
            if sentence
            for piece in split_phonemes(sentence, self.max_phonemes)
        ]

    def _run_piece(
        self,
        phonemes: list[str],
        label: str,
        request: int,
        index: int,
        first: bool,
        queued_at: float,
        slack: float,
    ) -> bytes:
        """Synthesize one piece and keep its record. ``slack``: seconds from its queueing
        until its caller runs out of audio (``inf``: no time given; negative: the text came
        after the audio before it had played)."""
        started = time.perf_counter()
        audio = self._audio(phonemes)
        record = SynthesisRecord(
            label=label,
            request=request,
            piece=index,
            first=first,
            phonemes=len(phonemes),
            queued_at=queued_at,
            started_at=started,
            ended_at=time.perf_counter(),
            audio_secs=len(audio) / 2 / self.sample_rate,
        )
        self.records.append(record)
        if first and index == 0 and record.ended_at - queued_at > SLOW_FIRST_SECS:
            logger.warning(
                f"{self.model_path.stem}: first audio of {label} after "
                f"{record.ended_at - queued_at:.2f} s (queued {started - queued_at:.2f} s, "
                f"{len(phonemes)} phonemes in {record.ended_at - started:.2f} s; "
                f"{self._queue.queued} waiting, {self._queue.busy} running)"
            )
        late = record.ended_at - queued_at - slack
        if late >= LATE_PIECE_SECS:
            logger.debug(
                f"{self.model_path.stem}: piece {index} of {label} ready {late:.2f} s after "
                f"its caller ran out of audio (text {max(0.0, -slack):.2f} s late, queued "
                f"{started - queued_at:.2f} s, {len(phonemes)} phonemes in "
                f"{record.ended_at - started:.2f} s; {self._queue.queued} waiting, "
                f"{self._queue.busy} running)"
            )
        with self._totals_lock:
            self.synthesis_secs_total += record.ended_at - record.started_at
            self.audio_secs_total += record.audio_secs
        return audio

    def _audio(self, phonemes: list[str]) -> bytes:
        """One model run, normalised and clipped exactly as ``PiperVoice.synthesize`` does."""
        ids = self._voice.phonemes_to_ids(phonemes)
        audio = np.asarray(self._voice.phoneme_ids_to_audio(ids), dtype=np.float32).squeeze()
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        audio = np.zeros_like(audio) if peak < 1e-8 else audio / peak
        audio = np.clip(audio, -1.0, 1.0)
        return np.clip(audio * 32767.0, -32767, 32767).astype(np.int16).tobytes()


def _session(model: Path, use_cuda: bool, threads: int | None):  # -> InferenceSession
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Pool threads that spin while idle take the core from the other engines.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
        if use_cuda
        else ["CPUExecutionProvider"]
    )
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)
