"""The phone output's pacing: a bounded reserve of audio ahead of the caller's ear."""

from __future__ import annotations

import pytest

from tests.fake_clock import FakeClock
from voxline.config import TwilioConfig
from voxline.transports.send_ahead import SendAhead
from voxline.transports.twilio import twilio_params

FRAME = 0.06


def test_frames_up_to_the_lead_go_at_once_then_one_per_frame_length():
    clock = FakeClock()
    pacer = SendAhead(0.12, clock)
    waits = [pacer.wrote(FRAME) for _ in range(2)]
    assert waits == pytest.approx([0.0, 0.0])  # 120 ms written at once: the reserve
    third = pacer.wrote(FRAME)
    assert third == pytest.approx(FRAME)  # from here on, real time
    clock.now += third
    assert pacer.wrote(FRAME) == pytest.approx(FRAME)
    assert pacer.ahead_secs() == pytest.approx(0.12 + FRAME)


def test_a_late_loop_spends_the_reserve_and_then_catches_up_without_waiting():
    clock = FakeClock()
    pacer = SendAhead(0.12, clock)
    for _ in range(3):
        clock.now += pacer.wrote(FRAME)
    clock.now += 0.1  # the event loop was late by 100 ms: the caller still had audio
    assert pacer.ahead_secs() > 0
    assert pacer.wrote(FRAME) == 0.0  # behind the lead: write the next frame at once
    assert pacer.ahead_secs() <= 0.12 + FRAME


def test_without_a_lead_each_frame_goes_as_the_one_before_ends():
    clock = FakeClock()
    pacer = SendAhead(0.0, clock)
    assert pacer.wrote(FRAME) == pytest.approx(FRAME)
    clock.now += 0.02  # woken 40 ms early: wait for the rest of the frame
    assert pacer.wrote(FRAME) == pytest.approx(2 * FRAME - 0.02)


def test_a_clear_empties_the_reserve():
    clock = FakeClock()
    pacer = SendAhead(0.12, clock)
    for _ in range(4):
        pacer.wrote(FRAME)
    pacer.reset()
    assert pacer.ahead_secs() == 0.0
    assert pacer.wrote(FRAME) == 0.0


def test_a_negative_lead_is_refused():
    with pytest.raises(ValueError, match="lead_secs"):
        SendAhead(-0.1)


def test_frame_length_reaches_the_transport_and_bad_lengths_are_refused():
    params = twilio_params(serializer=None, out_frame_ms=60)  # type: ignore[arg-type]
    assert params.audio_out_10ms_chunks == 6
    with pytest.raises(ValueError, match="multiple of 10"):
        twilio_params(serializer=None, out_frame_ms=25)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of"):
        TwilioConfig(out_frame_ms=25)
    with pytest.raises(ValueError, match="less than or equal"):
        TwilioConfig(send_ahead_ms=5000)


def test_a_frame_after_the_reserve_ran_out_leaves_a_gap_but_not_after_a_clear():
    clock = FakeClock()
    pacer = SendAhead(0.12, clock)
    pacer.wrote(FRAME)
    assert pacer.gap_secs == 0.0  # a stretch's first frame
    clock.now += FRAME + 0.25
    pacer.wrote(FRAME)
    assert pacer.gap_secs == pytest.approx(0.25)
    pacer.reset()  # an interruption: what comes next begins a new stretch
    clock.now += 1.0
    pacer.wrote(FRAME)
    assert pacer.gap_secs == 0.0
