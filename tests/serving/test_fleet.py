"""The bell that tells every replica the routing state changed, and waits for them to follow it.

Unit tests drive the Bell on one event loop; the end-to-end test joins the served app's real bell (a Ray
actor) as a second replica and checks that a promote call waits for it and reports it."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from serving import fleet
from serving.fleet import Bell, LocalFleet


def run(coro):
    return asyncio.run(coro)


def test_a_ring_wakes_a_waiting_follower_at_once():
    async def scenario():
        bell = Bell()
        waiting = asyncio.create_task(bell.wait("a", 0, timeout=30))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        rung = time.monotonic()
        generation = await bell.ring()
        return generation, await waiting, time.monotonic() - rung

    generation, woke_with, delay = run(scenario())
    assert generation == woke_with == 1
    assert delay < 5  # woken by the ring, not by its 30 s timeout


def test_without_a_ring_wait_returns_the_same_generation_at_its_timeout():
    async def scenario():
        bell = Bell()
        await bell.ring()
        return await bell.wait("a", 1, timeout=0.2), await bell.wait("a", 0, timeout=30)

    unchanged, behind = run(scenario())
    assert unchanged == 1  # nothing new: the follower re-reads the store anyway
    assert behind == 1  # a follower that saw an older (or a restarted bell's) generation returns at once


def test_wait_applied_waits_for_every_live_replica_and_names_the_laggards():
    async def scenario():
        bell = Bell()
        await bell.wait("a", 0, timeout=0.01)
        await bell.wait("b", 0, timeout=0.01)  # both registered, leases of 2 s
        generation = await bell.ring()
        await bell.applied("a", generation)
        late = await bell.wait_applied(generation, timeout=0.3)

        async def b_follows():
            await asyncio.sleep(0.2)
            await bell.applied("b", generation)

        follows = asyncio.create_task(b_follows())
        started = time.monotonic()
        done = await bell.wait_applied(generation, timeout=30)
        waited = time.monotonic() - started
        await follows
        return late, done, waited

    late, done, waited = run(scenario())
    assert late == {"replicas": 2, "following": 1, "lagging": ["b"]}
    assert done == {"replicas": 2, "following": 2, "lagging": []}
    assert 0.15 < waited < 5  # it waited for b's acknowledgement, not for its timeout


def test_a_replica_that_stopped_following_is_not_waited_for_once_its_lease_ran_out(monkeypatch):
    monkeypatch.setattr(fleet, "LEASE_GRACE_SECONDS", 0.2)
    monkeypatch.setattr(fleet, "LEASE_TICK_SECONDS", 0.05)

    async def scenario():
        bell = Bell()
        await bell.wait("gone", 0, timeout=0.01)  # then never calls again: a dead replica
        generation = await bell.ring()
        alive = asyncio.create_task(bell.wait("alive", generation, timeout=30))  # back in wait: a long lease
        await asyncio.sleep(0)
        await bell.applied("alive", generation)
        report = await bell.wait_applied(generation, timeout=10)
        alive.cancel()
        return report

    started = time.monotonic()
    report = run(scenario())
    assert report == {"replicas": 1, "following": 1, "lagging": []}
    assert time.monotonic() - started < 5  # the lease ran out; the 10 s timeout did not


def test_a_local_fleet_broadcast_reports_its_one_replica():
    async def scenario():
        local = LocalFleet()
        seen = await local.wait(0, timeout=0.01)
        report = await local.broadcast(timeout=5)
        await local.leave()
        return seen, report

    seen, report = run(scenario())
    assert seen == 0 and report == {"replicas": 1, "following": 1, "lagging": []}


@pytest.mark.e2e
def test_a_promote_call_waits_until_every_replica_follows(server):
    """A second follower joins the served app's bell (a real Ray actor): the promote
    call rings it, and answers only after it acknowledged, naming both replicas."""
    from serving.deployment import APP_NAME
    from serving.fleet import RayFleet

    joined, rung, acked = threading.Event(), threading.Event(), []

    async def follower():
        member = RayFleet(app=APP_NAME, replica="test-follower")
        try:
            seen = await member.wait(-1, timeout=0.01)
            joined.set()
            generation = await member.wait(seen, timeout=60)
            rung.set()
            await asyncio.sleep(1.0)  # slow to follow: the promote call must wait for this
            acked.append(time.monotonic())
            await member.applied(generation)
        finally:
            await member.leave()

    thread = threading.Thread(target=lambda: asyncio.run(follower()), daemon=True)
    thread.start()
    assert joined.wait(60)
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=120)
    try:
        reply = admin.post("/admin/promote", json={"adapter": server.adapter, "force": True})
        returned = time.monotonic()
        assert reply.status_code == 200, reply.text
        thread.join(30)
        assert rung.is_set() and acked and returned >= acked[0]
        replicas = reply.json()["replicas"]
        assert {k: replicas[k] for k in ("replicas", "following", "lagging")} == {
            "replicas": 2,
            "following": 2,
            "lagging": [],
        }
        assert replicas["seconds"] >= 1.0
    finally:
        admin.post("/admin/promote", json={"adapter": "base", "reason": "test cleanup"})
        admin.close()
