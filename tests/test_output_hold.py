"""The output transports' hold on the bot's audio while the caller may be barging in."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import OutputAudioRawFrame

from voxline.transports.hold import OutputHold


def audio_frame(*, interruptible: bool = True) -> OutputAudioRawFrame:
    frame = OutputAudioRawFrame(audio=b"\0\0" * 160, sample_rate=8000, num_channels=1)
    frame.interruptible = interruptible
    return frame


async def test_a_released_hold_lets_the_waiting_frame_play():
    hold = OutputHold()
    assert await hold.wait(audio_frame())  # not held: at once
    hold.hold()
    waiting = asyncio.create_task(hold.wait(audio_frame()))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a held frame was written"
    hold.release()
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert hold.holds == 1 and hold.held_secs >= 0.04


async def test_an_interruption_drops_the_waiting_frame_and_frees_the_next_reply():
    hold = OutputHold()
    hold.hold()
    waiting = asyncio.create_task(hold.wait(audio_frame()))
    await asyncio.sleep(0.02)
    hold.interrupt()
    assert await asyncio.wait_for(waiting, 1.0) is False, "the interrupted line's frame played"
    assert not hold.held
    assert await hold.wait(audio_frame()) is True  # the next reply is not held


async def test_an_interruption_with_no_hold_drops_nothing():
    hold = OutputHold()
    hold.interrupt()
    assert await hold.wait(audio_frame()) is True


async def test_a_non_interruptible_line_is_never_held():
    hold = OutputHold()
    hold.hold()
    assert await asyncio.wait_for(hold.wait(audio_frame(interruptible=False)), 0.1) is True
    assert hold.held


async def test_a_hold_nobody_releases_ends_by_itself():
    hold = OutputHold(max_secs=0.1)
    hold.hold()
    await asyncio.sleep(0.05)
    began = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(hold.wait(audio_frame()), 1.0) is True
    waited = asyncio.get_running_loop().time() - began
    assert waited < 0.09, "the hold's age counts from when it began, not from the frame"
    assert not hold.held


async def test_holding_twice_is_one_hold():
    hold = OutputHold()
    hold.hold()
    hold.hold()
    assert hold.holds == 1
    hold.release()
    assert not hold.held
