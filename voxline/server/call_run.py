"""Running one call's pipeline in the server: what phone and browser calls share.

The call's pipeline runs under its log context (every line carries the call's ids) and
is known to the process's :class:`~voxline.server.drain.Drain`, which ends it politely
(the persona's goodbye, then hang-up) if it is still running at the drain's deadline.
"""

from __future__ import annotations

import contextlib

from pipecat.pipeline.worker import PipelineWorker
from pipecat.workers.runner import WorkerRunner

from voxline.bot.call_events import CallEventsForCall
from voxline.server.drain import DRAIN_TIMEOUT, Drain
from voxline.tools.builtins import CallControl


async def run_pipeline(
    worker: PipelineWorker,
    lifecycle: CallEventsForCall,
    control: CallControl,
    *,
    drain: Drain | None,
    name: str,
) -> None:
    """Run ``worker`` (the call's pipeline) until the call ends.

    Args:
        worker: the call's pipeline worker.
        lifecycle: the call's events (end reason, log context).
        control: how the call is ended with its goodbye.
        drain: the process's drain, if it has one.
        name: the call as the drain's log lines name it ("call CA…").
    """

    async def end_at_drain_deadline() -> None:
        lifecycle.note_end_reason(DRAIN_TIMEOUT)
        await control.end_call()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    tracked = (
        drain.track(name, end_at_drain_deadline) if drain is not None else contextlib.nullcontext()
    )
    with lifecycle.log_context(), tracked:
        await runner.run()
