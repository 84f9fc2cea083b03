"""Silero VAD with one ONNX model per process, and each call's own state.

pipecat's :class:`~pipecat.audio.vad.silero.SileroVADAnalyzer` builds an ONNX
Runtime session for every analyzer, so every call loaded the model again: about
10 MB and 28 ms per call on the build machine (``benchmarks/vad_memory.py``).
The session itself holds no per-stream state: Silero's recurrent state and audio
context are inputs and outputs of each run, kept by pipecat's
:class:`~pipecat.audio.vad.silero.SileroOnnxModel` wrapper. So each call gets its
own wrapper (its state) around the process's one session; ONNX Runtime allows
concurrent ``run`` calls on one session from several threads.

pipecat also hands every frame of every call to a thread of the analyzer's own
(``run_in_executor``) and awaits the result. A Silero run on 32 ms of audio takes
about 0.1 ms; the hand-off costs more than that: a thread woken 50 times a second per
call, and a future and its callbacks on the event loop. A sampling profile of
``voxline serve`` with four phone calls found ``ThreadPoolExecutor.submit`` alone in
about a sixth of the event loop's busy samples. So the analysis runs inline, on the
loop that delivers the frame (``benchmarks/quiet_calls.py --against vad-thread``
compares the two, docs/cpu.md).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import onnxruntime
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState


@cache
def shared_silero_session() -> onnxruntime.InferenceSession:
    """The process's Silero VAD session (pipecat's bundled model), made on first use.

    One thread per run, as pipecat configures it: a run takes about 0.1 ms, and
    the calls' analyzers run in their own threads side by side.
    """
    path = str(resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx"))
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"], sess_options=options
    )


def _call_state(session: onnxruntime.InferenceSession) -> SileroOnnxModel:
    """pipecat's model wrapper (one call's recurrent state) around a shared session."""
    model = SileroOnnxModel.__new__(SileroOnnxModel)
    model.session = session
    model.sample_rates = [8000, 16000]
    model.reset_states()
    return model


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """pipecat's Silero VAD analyzer, on the process's shared ONNX session, run inline.

    Behaves exactly as :class:`SileroVADAnalyzer` (same thresholds, same state
    resets); the model load is shared, and each frame is scored on the calling event
    loop rather than handed to a thread (module doc).

    Args:
        sample_rate: 8000 or 16000, or None to take the pipeline's.
        params: the VAD thresholds.
    """

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        # Not SileroVADAnalyzer.__init__: that would load the model for this call.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _call_state(shared_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """The VAD's state after ``buffer``, scored here and now (module doc: why not in
        a thread); the same state machine as pipecat's, which this calls."""
        return self._run_analyzer(buffer)
