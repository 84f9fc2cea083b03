"""Keypad entries as the caller's turns: "4821#" is answered like a spoken sentence.

pipecat's :class:`DTMFAggregator` turns the digits into a ``TranscriptionFrame``
("Caller pressed 4821#") when the terminator key is pressed or the keys pause.
On its own that transcript waits in the user aggregator for the end of the
caller's next *spoken* turn, so a caller who types a card number and waits hears
nothing. Here an entry made outside a spoken turn is framed as a turn of its
own (proposed start, the transcript, proposed stop), which the aggregator's turn
strategy commits like one the turn-taker ends; an entry made while the caller is
talking joins that spoken turn instead.
"""

from __future__ import annotations

from pipecat.frames.frames import (
    Frame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.frame_processor import FrameDirection


class KeypadTurnAggregator(DTMFAggregator):
    """Collects keypad digits and ends the caller's turn with them.

    Args:
        **kwargs: :class:`DTMFAggregator`'s (``timeout``, ``termination_digit``, ``prefix``).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._spoken_turn_open = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the turn-taker's spoken turns, then aggregate digits as pipecat does."""
        if isinstance(frame, ProposedUserStartedSpeakingFrame):
            self._spoken_turn_open = True
        elif isinstance(frame, ProposedUserStoppedSpeakingFrame):
            self._spoken_turn_open = False
        await super().process_frame(frame, direction)

    async def _flush_aggregation(self):
        """Push the entry's transcript; outside a spoken turn, as a whole turn."""
        if not self._aggregation:
            return
        if self._spoken_turn_open:
            await super()._flush_aggregation()
            return
        await self.push_frame(ProposedUserStartedSpeakingFrame())
        await super()._flush_aggregation()
        await self.push_frame(ProposedUserStoppedSpeakingFrame())
