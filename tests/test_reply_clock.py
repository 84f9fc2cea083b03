"""The reply clock: when the caller will have heard the audio sent so far.

A fake time source makes each expected moment exact.
"""

from __future__ import annotations

import pytest

from voxline.processors.reply_clock import ReplyClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_audio_plays_after_the_audio_before_it_or_from_now():
    time = FakeTime()
    clock = ReplyClock(time)
    assert clock.ends_at is None
    clock.add(2.0)
    clock.add(1.0)  # queued behind the first two seconds
    assert clock.ends_at == pytest.approx(103.0)
    time.now = 110.0  # all heard: the next audio plays from now
    clock.add(1.5)
    assert clock.ends_at == pytest.approx(111.5)


def test_a_held_reply_is_counted_from_the_release():
    time = FakeTime()
    clock = ReplyClock(time, held=True)
    clock.add(2.0)
    time.now = 101.0
    clock.add(1.0)
    assert clock.held
    # The commit may come at any moment: until it does, the audio is heard from now.
    assert clock.ends_at == pytest.approx(104.0)
    time.now = 105.0
    assert clock.ends_at == pytest.approx(108.0)

    time.now = 106.0
    clock.release()
    assert not clock.held
    assert clock.ends_at == pytest.approx(109.0)
    time.now = 107.0  # released: no longer moves with the time
    assert clock.ends_at == pytest.approx(109.0)


def test_audio_added_after_the_release_plays_after_the_held_audio_or_from_now():
    time = FakeTime()
    clock = ReplyClock(time)
    clock.start(held=True)
    clock.add(3.0)
    clock.release()  # heard until 103
    time.now = 101.0
    clock.add(1.0)
    assert clock.ends_at == pytest.approx(104.0)
    time.now = 120.0
    clock.add(1.0)
    assert clock.ends_at == pytest.approx(121.0)


def test_a_release_with_nothing_held_counts_from_now_and_without_a_hold_changes_nothing():
    time = FakeTime()
    clock = ReplyClock(time, held=True)
    clock.release()
    assert clock.ends_at == pytest.approx(100.0)

    clock.add(2.0)
    time.now = 101.0
    clock.release()  # not held
    assert clock.ends_at == pytest.approx(102.0)


def test_start_and_reset_forget_the_audio_sent_and_the_hold():
    time = FakeTime()
    clock = ReplyClock(time)
    clock.add(5.0)
    clock.start(held=True)
    assert clock.held
    assert clock.ends_at == pytest.approx(100.0)  # nothing held yet
    clock.add(2.0)
    clock.reset()
    assert not clock.held
    assert clock.ends_at is None
    clock.add(1.0)  # the forgotten audio does not delay it
    assert clock.ends_at == pytest.approx(101.0)

    clock.start(held=False)
    assert not clock.held and clock.ends_at is None
