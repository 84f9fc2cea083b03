"""Run a few pipecat processors as a pipeline, in the test's event loop."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import EndFrame, Frame
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner


class RunningPipeline:
    """``async with RunningPipeline([...]) as run:`` queue frames with ``run.queue``.

    Leaving the block sends an ``EndFrame`` and waits until every frame before it has
    gone through the pipeline.
    """

    def __init__(
        self,
        processors: list[FrameProcessor],
        *,
        out_sample_rate: int = 16_000,
        observers: list[BaseObserver] | None = None,
    ):
        self.worker = PipelineWorker(
            Pipeline(processors),
            params=PipelineParams(audio_out_sample_rate=out_sample_rate),
            observers=observers,
            enable_rtvi=False,
        )
        self._runner = WorkerRunner(handle_sigint=False)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RunningPipeline:
        await self._runner.add_workers(self.worker)
        self._task = asyncio.create_task(self._runner.run())
        return self

    async def queue(self, *frames: Frame) -> None:
        """Send frames into the pipeline, in order."""
        for frame in frames:
            await self.worker.queue_frame(frame)

    async def __aexit__(self, *exc) -> None:
        await self.worker.queue_frame(EndFrame())
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)
