"""Call controls for transports that are not a phone line (``talk``, browsers)."""

from __future__ import annotations

from pipecat.frames.frames import EndFrame
from pipecat.pipeline.worker import PipelineWorker

from voxline.processors.frames import spoken_line


class PipelineCallControl:
    """Ends the call by ending its pipeline; transfer and keypad tones are refused.

    ``worker`` is set once the call's pipeline exists.
    """

    def __init__(self, goodbye: str, *, interruptible: bool = True):
        self._goodbye = goodbye
        self._interruptible = interruptible
        self.worker: PipelineWorker | None = None

    async def end_call(self, goodbye: str = "") -> None:
        """Say goodbye; the pipeline ends once the goodbye has been spoken."""
        if self.worker is None:
            raise RuntimeError("the call is not running")
        line = spoken_line(goodbye or self._goodbye, interruptible=self._interruptible)
        await self.worker.queue_frames([line, EndFrame()])

    async def transfer_call(self, number: str) -> None:
        """There is no phone line to transfer."""
        raise RuntimeError("transferring is only possible on phone calls")

    async def send_dtmf(self, digits: str) -> None:
        """There is no phone line to press keys on."""
        raise RuntimeError("keypad tones are only possible on phone calls")
