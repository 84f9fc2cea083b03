"""pipecat's eager end-of-turn strategy, ending each turn once.

:class:`~pipecat.turns.user_stop.EagerUserTurnStopStrategy` keeps the reply prepared for
a speculative transcript when the committed transcript is the same. Two paths of its
base class can end a turn: the proposed stop the turn-taker pushes, and the strategy's
own timer (every 0.5 s, for transcripts that come late). When both fire within the same
millisecond, the two calls interleave: the first takes the speculation and waits while
its timeout task is cancelled, the second finds no speculation, ends the turn and clears
its transcript, and the first then compares the speculation with an empty transcript,
discards the prepared reply and asks for another. The caller hears the answer twice (a
CI run of ``test_turn_taking.py`` did). Here the second call waits for the first and
finds the turn already over.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pipecat.turns.user_stop import EagerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import EagerUserTurnStrategies


class OnceEagerUserTurnStopStrategy(EagerUserTurnStopStrategy):
    """:class:`EagerUserTurnStopStrategy` whose turn ends once, whichever path ends it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._stopping = asyncio.Lock()

    async def trigger_user_turn_stopped(self, *, enable_user_speaking_frames: bool | None = None):
        """End the turn unless another path has just ended it."""
        async with self._stopping:
            if not self._turn_open:
                return
            await super().trigger_user_turn_stopped(
                enable_user_speaking_frames=enable_user_speaking_frames
            )


@dataclass
class OnceEagerUserTurnStrategies(EagerUserTurnStrategies):
    """pipecat's :class:`EagerUserTurnStrategies` with :class:`OnceEagerUserTurnStopStrategy`."""

    def __post_init__(self):
        super().__post_init__()
        self.stop = [
            OnceEagerUserTurnStopStrategy(
                match_policy=self.match_policy, speculation_timeout=self.speculation_timeout
            )
        ]
