"""A region's breaker and the exit drain, against a store restarted after a kill: the region is
tried again within a second or two, not after the breaker's full cooldown, and a process that
exits pays what it owes now, not when a back-off earned while the region was down falls due.
Regression: every trial of the chaos campaign with a killed S3 store spent about 5 s more in its
clients' exit drains than in their operations. No stack: regions in memory."""

from __future__ import annotations

import hashlib

from xregion.plugins import replication
from xregion.plugins.outbox import KeyState
from xregion.plugins.replication import RegionHealth
from xregion.store import RegionUnavailable

from .test_delete_units import KEY, HeldStore, held_replicator


def test_the_breaker_backs_off_per_failure_in_a_row_and_closes_on_success(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(replication.time, "monotonic", lambda: now[0])
    health = RegionHealth(cooldown=5.0, first=1.0)
    holds = []
    for _ in range(5):
        health.failed("b")
        opened = now[0]
        while not health.up("b"):
            now[0] += 0.25
        holds.append(now[0] - opened)
    assert holds == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert health.up("a")  # one region's failures open no other's breaker
    health.ok("b")
    health.failed("b")
    assert not health.up("b")
    now[0] += 1.0
    assert health.up("b")  # a success started the back-off again from its first step
    health.failed("b", seconds=60)
    now[0] += 30
    assert not health.up("b")  # held open as long as the caller said


def test_the_exit_drain_pays_now_what_a_back_off_would_delay(tmp_path):
    """Region b was down when the copy was first tried (30 s back-off), and is back: the exit
    drain copies it at once instead of exiting with it owed."""
    rep, stores, (a, b) = held_replicator(tmp_path)
    gen = rep.outbox.begin_write(KEY)
    data = b"acknowledged by region a alone"
    stores[a].objects[KEY] = (data, gen)
    state = KeyState(KEY, gen, "put", hashlib.sha256(data).hexdigest(), len(data))
    rep.outbox.end_write(KEY, gen, state, owe=[(b, "region-down")])
    (item,) = rep.outbox.lease()
    rep.outbox.failed(item, "region b: connection refused", retry_in=30.0)
    result = rep.drain_at_exit(timeout=3.0)
    assert result.drained, result
    assert stores[b].objects[KEY] == (data, gen)


class RestartingStore(HeldStore):
    """Region b's store, killed and still restarting when the drain first tries it: it refuses
    the first ``refusals`` writes, then takes them."""

    def __init__(self, refusals: int):
        super().__init__()
        self.refusals = refusals

    def put_file(self, key, local, **kw):
        if self.refusals:
            self.refusals -= 1
            raise RegionUnavailable("region b: connection refused")
        return super().put_file(key, local, **kw)


def test_a_drain_someone_waits_on_retries_a_region_back_from_a_restart_at_once(tmp_path):
    """The exit drain's first try finds b still restarting; b is back a moment later. The drain
    tries again within a second, not when b's breaker and the row's back-off (8 s after its fourth
    failure) would allow: the process exits paid up, within its 3 s."""
    rep, stores, (a, b) = held_replicator(tmp_path)
    stores[b] = rep.stores[b] = RestartingStore(refusals=1)
    gen = rep.outbox.begin_write(KEY)
    data = b"acknowledged by region a alone"
    stores[a].objects[KEY] = (data, gen)
    state = KeyState(KEY, gen, "put", hashlib.sha256(data).hexdigest(), len(data))
    rep.outbox.end_write(KEY, gen, state, owe=[(b, "region-down")])
    for _ in range(3):  # tried while b was down
        (item,) = rep.outbox.lease()
        rep.outbox.failed(item, "region b: connection refused", retry_in=0.0)
    result = rep.drain_at_exit(timeout=3.0)
    assert result.drained, result
    assert stores[b].objects[KEY] == (data, gen)
