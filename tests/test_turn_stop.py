"""A turn whose end two paths trigger at once keeps its prepared reply and ends once.

pipecat's eager stop strategy can be asked to end a turn by the turn-taker's proposed
stop and, in the same millisecond, by its own 0.5 s timer. A CI run interleaved the two:
the prepared reply was discarded, the LLM asked again, and the caller heard the answer
twice. Here the second trigger starts while the first waits inside the strategy, as the
timer did.
"""

from __future__ import annotations

import asyncio

from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    EagerTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.user_stop import EagerUserTurnStopStrategy, ExactMatch
from pipecat.utils.asyncio.task_manager import TaskManager

from voxline.processors.turn_stop import OnceEagerUserTurnStopStrategy

QUESTION = "What time does the branch open on Saturday?"


async def end_the_turn_twice_at_once(strategy: EagerUserTurnStopStrategy) -> list[str]:
    """What the strategy told its controller when two paths ended one speculated turn."""
    events: list[str] = []

    async def inference(_strategy, speculation):
        events.append("speculative inference" if speculation else "inference")

    async def stopped(_strategy, params):
        events.append("kept" if params.confirms_speculation else "stopped")
        await strategy.handle_user_turn_stopped()  # as the controller does

    async def cancelled(_strategy):
        events.append("speculation discarded")

    strategy.add_event_handler("on_user_turn_inference_triggered", inference)
    strategy.add_event_handler("on_user_turn_stopped", stopped)
    strategy.add_event_handler("on_user_turn_speculation_cancelled", cancelled)
    await strategy.setup(
        FrameProcessorSetup(clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None)
    )
    try:
        await strategy.process_frame(ProposedUserStartedSpeakingFrame())
        await strategy.handle_user_turn_started()
        await strategy.process_frame(EagerTranscriptionFrame(QUESTION, "", "now"))
        await strategy.process_frame(TranscriptionFrame(QUESTION, "", "now", finalized=True))
        # The first trigger takes the speculation and waits while its timer is cancelled;
        # the second runs meanwhile.
        first = asyncio.create_task(strategy.trigger_user_turn_stopped())
        await asyncio.sleep(0)
        second = asyncio.create_task(strategy.trigger_user_turn_stopped())
        await asyncio.gather(first, second)
    finally:
        await strategy.cleanup()
    return events


async def test_two_paths_ending_a_turn_at_once_keep_its_prepared_reply():
    strategy = OnceEagerUserTurnStopStrategy(match_policy=ExactMatch(), speculation_timeout=5)
    assert await end_the_turn_twice_at_once(strategy) == ["speculative inference", "kept"]


async def test_pipecats_own_strategy_answers_such_a_turn_twice():
    """The interleaving the wrapper closes: without it the prepared reply is thrown away
    and the turn is answered twice more (the CI run's log said the same: "eager end of
    turn missed ... committed: []")."""
    strategy = EagerUserTurnStopStrategy(match_policy=ExactMatch(), speculation_timeout=5)
    events = await end_the_turn_twice_at_once(strategy)
    assert "speculation discarded" in events and events.count("inference") == 2, events
