"""Admission: checking for a free line and taking it are one step; promised lines expire."""

from __future__ import annotations

import asyncio

import pytest

from voxline.server.admission import Admission, CallRejected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_takers_never_exceed_capacity():
    admission = Admission(max_calls=3)
    taken = []

    async def caller(i: int) -> None:
        await asyncio.sleep(0)  # every caller is scheduled before any takes
        slot = admission.try_take(key=f"CA{i}", hold_secs=5)
        if slot is not None:
            taken.append(slot)

    await asyncio.gather(*(caller(i) for i in range(20)))
    assert len(taken) == 3 and admission.active == 3
    assert admission.refused == 17


async def test_a_reservation_expires_unless_its_call_claims_it():
    clock = Clock()
    admission = Admission(max_calls=1, clock=clock)
    assert admission.try_take(key="CA1", hold_secs=60) is not None
    assert admission.full and admission.reserved == 1
    assert admission.try_take(key="CA2", hold_secs=60) is None
    clock.now += 61  # Twilio never opened the stream
    assert not admission.full and admission.claim("CA1") is None
    second = admission.try_take(key="CA2", hold_secs=60)
    assert second is not None and admission.claim("CA2") is second
    async with admission.hold(second):
        clock.now += 3600  # a held call does not expire
        assert admission.active == 1 and admission.reserved == 0
        assert admission.try_take() is None
    assert admission.active == 0


async def test_a_lapsed_reservation_cannot_be_held():
    clock = Clock()
    admission = Admission(max_calls=1, clock=clock)
    slot = admission.try_take(hold_secs=1)
    assert slot is not None
    clock.now += 2
    with pytest.raises(CallRejected, match="expired"):
        async with admission.hold(slot):
            pass
    assert admission.active == 0


async def test_a_retried_webhook_replaces_its_reservation():
    admission = Admission(max_calls=1)
    first = admission.try_take(key="CA1", hold_secs=60)
    again = admission.try_take(key="CA1", hold_secs=60)
    assert first is not None and again is not None and first is not again
    assert admission.active == 1 and admission.claim("CA1") is again


async def test_admit_refuses_beyond_capacity_and_releases():
    admission = Admission(max_calls=1)
    async with admission.admit():
        with pytest.raises(CallRejected, match="busy: 1 of 1"):
            async with admission.admit():
                pass
    assert admission.active == 0 and admission.refused == 1
    slot = admission.try_take()
    assert slot is not None
    slot.release()
    slot.release()  # twice is harmless
    assert admission.active == 0


async def test_a_closed_admission_takes_no_new_call_but_its_promises_stand():
    admission = Admission(max_calls=4)
    promised = admission.try_take(key="CA1", hold_secs=60)
    admission.close()
    assert admission.try_take() is None and admission.try_take(key="CA2", hold_secs=60) is None
    assert admission.refused == 2 and admission.busy_reason().startswith("draining")
    assert admission.claim("CA1") is promised  # the stream of a call promised before
    async with admission.hold(promised):
        assert admission.held == 1
    assert admission.active == 0


async def test_wait_idle_wakes_at_the_last_release_and_at_a_lapse():
    admission = Admission(max_calls=2)
    call = admission.try_take()
    assert call is not None
    assert not await admission.wait_idle(0.05)
    asyncio.get_running_loop().call_later(0.1, call.release)
    assert await asyncio.wait_for(admission.wait_idle(5), 1)

    admission.try_take(key="CA1", hold_secs=0.2)  # a promise nobody claims
    assert await admission.wait_idle(0.0, calls_only=True)  # no call in progress
    started = asyncio.get_running_loop().time()
    assert await admission.wait_idle(5)  # the reservation lapses
    assert asyncio.get_running_loop().time() - started < 1.0
