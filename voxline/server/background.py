"""A server's background job: one task, started with the app and stopped with it.

The server samples its event loop's lag, reads the LLM servers' prefix-cache
counters and checks the model servers' health, each on an interval, in a task of its
own. They share how that task is started and stopped: at most one task per job, and a
stop that cancels it and waits for it without turning the cancellation of whoever
called ``stop`` into an error of the job.
"""

from __future__ import annotations

import asyncio


class BackgroundJob:
    """Runs :meth:`_run` as one background task between :meth:`start` and :meth:`stop`.

    Subclasses implement :meth:`_run` (a loop that runs until cancelled) and set
    :attr:`task_name`.
    """

    task_name = "voxline-background"
    _task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the job's task has been started and not stopped."""
        return self._task is not None

    def start(self) -> None:
        """Start the job on the running loop (once: a second start does nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the job and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # gather, not suppress(CancelledError): a cancellation of the caller stays one.
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError
