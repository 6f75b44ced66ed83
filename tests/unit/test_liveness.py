"""Liveness that scales: one timer per worker, and pings that lengthen as workers join."""

from __future__ import annotations

import pytest

from broker.core import Scheduler, Timing
from broker.invariants import CheckedScheduler
from broker.roster import SLOT, detection_time, interval_for
from common.errors import InvalidInput
from common.messages import Ping, Ready
from common.models import WorkerStatus
from tests import edge

T0 = 1_000_000.0


def core_with(ping_rate: float) -> Scheduler:
    return CheckedScheduler(Timing(ping_interval=1.0, liveness=3, ping_rate=ping_rate))


def join(core: Scheduler, worker_id: str, now: float = T0, adaptive: bool = True) -> bytes:
    body = {"id": worker_id, "slots": 1, "capabilities": ["echo"], "adaptive_ping": adaptive}
    edge.register(core, worker_id.encode(), body, now)
    return worker_id.encode()


def test_the_interval_is_the_configured_one_up_to_ping_rate_workers_then_grows() -> None:
    assert interval_for(10, 1.0, 1000.0) == 1.0
    assert interval_for(1000, 1.0, 1000.0) == 1.0
    assert interval_for(2000, 1.0, 1000.0) == 2.0
    assert interval_for(10_000, 1.0, 1000.0) == 10.0
    # the times docs/operations.md states, with the default settings
    assert [detection_time(n) for n in (10, 1000, 2000, 5000, 10_000)] == [3, 3, 6, 15, 30]


def test_each_ping_tells_an_adaptive_worker_the_interval_of_the_cluster_it_is_in() -> None:
    # Given a broker that pings 2 times a second in all, and 4 workers that follow
    core = core_with(ping_rate=2.0)
    addresses = [join(core, f"w{i}") for i in range(4)]
    # When each has been pinged once
    pinged: dict[bytes, float] = {}
    now = T0
    while len(pinged) < 4:
        now += SLOT
        for address in core.tick(now):
            pinged.setdefault(address, core.ping(address).ping_interval or 0.0)
    # Then every ping said 2 s (4 workers / 2 a second), and the next comes 2 s later
    assert pinged == dict.fromkeys(addresses, 2.0)
    # the first pings came within two intervals (none in the first: each READY was a sign
    # of life)
    assert now <= T0 + 2 * 2.0 + SLOT
    for worker in core.roster.online.values():
        assert worker.interval == 2.0


def test_a_worker_that_does_not_follow_keeps_the_interval_its_welcome_said() -> None:
    core = core_with(ping_rate=2.0)
    for i in range(6):
        join(core, f"new{i}")
    old = join(core, "old", adaptive=False)
    now, pings = T0, 0
    while now < T0 + 10:
        now += SLOT
        pinged = core.tick(now)
        for address in pinged:  # each answers its pings
            worker = core.worker_at(address)
            assert worker is not None
            core.seen(worker, now)
        pings += pinged.count(old)
        assert core.ping(old).ping_interval == 1.0
    assert pings >= 8


def test_pings_of_workers_registered_together_are_spread_over_the_interval() -> None:
    core = core_with(ping_rate=1000.0)
    for i in range(50):
        join(core, f"w{i}")
    first: dict[bytes, float] = {}
    for step in range(1, 31):
        now = T0 + step * SLOT
        for address in core.tick(now):
            first.setdefault(address, round(now - T0, 1))
    # none pinged within the first interval (each READY was a sign of life), then every
    # worker pinged within the second, no slot taking more than a fifth
    assert len(first) == 50 and all(1.0 <= at <= 2.0 for at in first.values())
    slots = [list(first.values()).count(at) for at in set(first.values())]
    assert max(slots) <= 10


def test_a_worker_heard_from_within_its_interval_is_not_pinged() -> None:
    # Given a worker that reports every half interval (a busy one), then falls silent
    core = core_with(ping_rate=1000.0)
    address = join(core, "busy")
    worker = core.worker_at(address)
    assert worker is not None
    now, pings = T0, []
    while now < T0 + 10:
        now += SLOT
        if round((now - T0) / SLOT) % 5 == 0:
            core.seen(worker, now)
        pings += [now for a in core.tick(now) if a == address]
    # Then it was never pinged
    assert pings == []
    # When it falls silent, it is pinged within two intervals, and offline after three
    silent_from = worker.last_seen
    while worker.status is WorkerStatus.ONLINE and now < silent_from + 10:
        now += SLOT
        pings += [now for a in core.tick(now) if a == address]
    assert pings and pings[0] <= silent_from + 2.0 + SLOT
    assert silent_from + 3.0 < now <= silent_from + 3.0 + 2 * SLOT


def test_a_silent_adaptive_worker_is_offline_after_liveness_intervals_of_its_own() -> None:
    # Given 4 workers pinged every 2 s, all heard from at T0 + 2.5
    core = core_with(ping_rate=2.0)
    for i in range(4):
        join(core, f"w{i}")
    now = T0
    while now < T0 + 2.5:
        now += SLOT
        core.tick(now)
    for worker in list(core.roster.online.values()):
        core.seen(worker, T0 + 2.5)
    # When w0 falls silent while the others keep answering
    offline_at = None
    while offline_at is None and now < T0 + 20:
        now += SLOT / 2
        for worker in list(core.roster.online.values()):
            if worker.id != "w0":
                core.seen(worker, now)
        core.tick(now)
        if core.workers["w0"].status is WorkerStatus.OFFLINE:
            offline_at = now
    # Then it is offline once silent for 3 x 2 s, not before, and the others are not.
    assert offline_at is not None
    assert T0 + 2.5 + 6.0 < offline_at <= T0 + 2.5 + 6.0 + SLOT
    assert all(core.workers[f"w{i}"].status is WorkerStatus.ONLINE for i in (1, 2, 3))


def test_liveness_keeps_one_timer_per_worker() -> None:
    core = Scheduler(Timing(ping_interval=1.0, liveness=3))
    for i in range(100):
        join(core, f"w{i}")
    now = T0
    for _ in range(300):
        now += SLOT
        for address in core.tick(now):
            worker = core.worker_at(address)
            assert worker is not None
            core.seen(worker, now)
    assert len(core.timers) == 100


def test_ping_and_ready_carry_the_adaptive_fields_and_older_bodies_still_decode() -> None:
    assert Ping.decode(Ping(2.5).to_body()) == Ping(2.5)
    assert Ping.decode({}) == Ping(None)  # an older broker's PING
    assert Ping().to_body() == {}
    with pytest.raises(InvalidInput):
        Ping.decode({"ping_interval": 0})
    body = Ready("w", 1, ["echo"], adaptive_ping=True).to_body()
    assert Ready.decode(body).adaptive_ping is True
    del body["adaptive_ping"]  # an older worker's READY
    assert Ready.decode(body).adaptive_ping is False
    with pytest.raises(InvalidInput):
        Ready.decode({**body, "adaptive_ping": "yes"})
