"""A clock the test moves by hand, for code that takes a ``clock`` callable."""

from __future__ import annotations


class FakeClock:
    """Returns ``now`` (seconds), which starts at 100 and moves only when a test sets it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
