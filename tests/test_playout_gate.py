"""The playout gate: spoken text is released only once the transport has played its audio."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    OutputAudioRawFrame,
    TTSTextFrame,
    UserSpeakingFrame,
)

from voxline.transports.playout import PlayoutGate


class FakeClock:
    """A transport's playout position, set by the test."""

    def __init__(self) -> None:
        self.written = 0.0
        self.played = 0.0

    def written_secs(self) -> float:
        return self.written

    def played_secs(self) -> float:
        return self.played


class Speaker:
    """A transport that plays what it is given in real time from now on."""

    def __init__(self) -> None:
        self.written = 0.0
        self.until = 0.0

    def write(self, secs: float) -> None:
        now = asyncio.get_running_loop().time()
        self.until = max(now, self.until) + secs
        self.written += secs

    def written_secs(self) -> float:
        return self.written

    def played_secs(self) -> float:
        queued = max(0.0, self.until - asyncio.get_running_loop().time())
        return self.written - queued


def text(words: str) -> TTSTextFrame:
    return TTSTextFrame(words, text_type="sentence")


def audio(secs: float = 0.02) -> OutputAudioRawFrame:
    return OutputAudioRawFrame(bytes(int(16000 * secs) * 2), sample_rate=16000, num_channels=1)


def gate_with(clock) -> tuple[PlayoutGate, list]:
    released: list = []

    async def release(frame) -> None:
        released.append(frame)

    gate = PlayoutGate(clock)
    gate.bind(release)
    return gate, released


async def test_text_waits_until_the_audio_before_it_has_played():
    clock = FakeClock()
    gate, released = gate_with(clock)
    clock.written = 1.2  # the first chunk's audio is written, none of it played yet
    first = text("Your balance is")
    assert await gate.admit(first)
    assert not await gate.admit(audio())  # audio is pushed after it was written: never held
    clock.written = 2.5
    second, end = text("forty two dollars."), LLMFullResponseEndFrame()
    assert await gate.admit(second) and await gate.admit(end)
    assert not await gate.admit(UserSpeakingFrame())  # system frames never wait
    assert released == []

    clock.played = 1.19
    await gate.update()
    assert released == []
    clock.played = 1.2
    await gate.update()
    assert released == [first]
    clock.played = 2.5
    await gate.update()
    assert released == [first, second, end]  # and the frames after it, in order
    assert gate.heard == ["Your balance is", "forty two dollars."]
    assert not await gate.admit(LLMFullResponseEndFrame())  # nothing held: flows at once
    await gate.close()


async def test_barge_in_keeps_played_chunks_and_drops_the_rest_in_order():
    clock = FakeClock()
    gate, released = gate_with(clock)
    chunks = [text("One."), text("Two."), text("Three."), text("Four.")]
    end = LLMFullResponseEndFrame()
    for index, chunk in enumerate(chunks):
        clock.written = 1.0 * (index + 1)
        assert await gate.admit(chunk)
    assert await gate.admit(end)

    # The caller speaks 2.4 s into the reply: chunk two ended at 2.0 s (no update came
    # since), chunk three was playing, chunk four never played.
    clock.played = 2.4
    await gate.interrupt()
    assert released == [chunks[0], chunks[1], end]
    assert gate.heard == ["One.", "Two."]
    assert gate.spoken == ["One.", "Two.", "Three.", "Four."]
    assert not gate.holding
    clock.played = 4.0
    await gate.update()  # dropped text stays dropped
    assert released == [chunks[0], chunks[1], end]
    await gate.close()


async def test_interruption_before_any_audio_played_drops_every_chunk():
    clock = FakeClock()
    gate, released = gate_with(clock)
    clock.written = 0.8
    assert await gate.admit(text("Hello, you have reached Northwind Bank."))
    await gate.interrupt()
    assert released == [] and gate.heard == []
    await gate.close()


async def test_held_audio_plays_out_without_further_writes():
    # After the last chunk nothing more is written: the gate wakes itself when the
    # audio still queued in the transport has played.
    speaker = Speaker()
    gate, released = gate_with(speaker)
    loop = asyncio.get_running_loop()
    speaker.write(0.15)
    last = text("Goodbye.")
    started = loop.time()
    assert await gate.admit(last)
    drained = gate.next_drain()
    await asyncio.wait_for(drained, 2.0)
    waited = loop.time() - started
    assert released == [last]
    assert 0.12 <= waited <= 0.5, waited
    await gate.close()


async def test_text_of_audio_not_yet_played_is_not_released_early_by_the_timer():
    speaker = Speaker()
    gate, released = gate_with(speaker)
    speaker.write(0.3)
    first = text("First.")
    assert await gate.admit(first)
    speaker.write(0.3)
    second = text("Second.")
    assert await gate.admit(second)
    await asyncio.sleep(0.4)  # the first chunk has played, the second has not
    assert released == [first]
    await gate.interrupt()
    assert gate.heard == ["First."]
    await gate.close()


async def test_a_line_is_heard_only_when_its_own_words_have_played():
    # The goodbye is requested while an earlier reply is still playing and the
    # goodbye's audio is not written yet: the earlier reply's drain is not its end,
    # nor is a drain between its two sentences.
    clock = FakeClock()
    gate, _ = gate_with(clock)
    clock.written = 1.0
    assert await gate.admit(text("Sure."))
    since = gate.mark()
    heard = asyncio.create_task(gate.wait_heard("Thank you for calling. Goodbye.", since, 5.0))
    clock.played = 1.0
    await gate.update()  # "Sure." played: a drain, but not the goodbye's
    await asyncio.sleep(0.05)
    assert not heard.done()
    clock.written = 2.0
    assert await gate.admit(text("Thank you for calling."))
    clock.played = 2.0
    await gate.update()  # drained between the goodbye's sentences
    await asyncio.sleep(0.05)
    assert not heard.done()
    clock.written = 2.6
    assert await gate.admit(text("Goodbye."))
    clock.played = 2.6
    await gate.update()
    assert await asyncio.wait_for(heard, 1.0) is True
    await gate.close()


async def test_waiting_for_a_line_ends_when_the_caller_talks_over_it_or_on_timeout():
    clock = FakeClock()
    gate, _ = gate_with(clock)
    since = gate.mark()
    heard = asyncio.create_task(gate.wait_heard("Goodbye.", since, 5.0))
    clock.written = 0.8
    assert await gate.admit(text("Goodbye."))
    await gate.interrupt()
    assert await asyncio.wait_for(heard, 1.0) is False
    assert gate.interruptions == since[1] + 1
    started = asyncio.get_running_loop().time()
    assert await gate.wait_heard("Goodbye.", gate.mark(), 0.2) is False
    assert asyncio.get_running_loop().time() - started >= 0.19
    await gate.close()
