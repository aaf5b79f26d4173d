"""Which write of a key is newest (issue 13): deletes racing copies, deletes past an open breaker,
read-repair during an overwrite, a stale copy finishing last. Real moto endpoints; where an
interleaving must be forced, a copy to region b is held just before its upload (the store under
it is the real one) until the test has done what races it."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from xregion.plugins import outbox as ledger
from xregion.plugins.replication import Replicator
from xregion.plugins.verify import check, resync
from xregion.store import ObjectNotFound, RegionStore, stores

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


class HeldStore:
    """A real region store whose uploads of one key wait at a gate (the copy is in flight)."""

    def __init__(self, store: RegionStore, key: str):
        self._store, self.key = store, key
        self.entered, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _hold(self, key: str) -> None:
        if key == self.key and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(60), "the test never released the held copy"

    def put_payload(self, key, payload, **kw):
        self._hold(key)
        return self._store.put_payload(key, payload, **kw)

    def put_file(self, key, path, sha256=None, **kw):
        self._hold(key)
        return self._store.put_file(key, path, sha256, **kw)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.fixture
def key():
    return f"ordering/{uuid.uuid4().hex}/obj.bin"


def held_replicator(stack, led: Path, key: str, mode: str = "async") -> tuple[Replicator, HeldStore]:
    real = stores(stack.cfg)
    held = HeldStore(real["b"], key)
    return Replicator(stack.cfg, led, mode=mode, region_stores={"a": real["a"], "b": held}), held


def test_delete_during_an_in_flight_copy_does_not_resurrect(stack, tmp_path, key):
    rep, held = held_replicator(stack, tmp_path / "ledger.sqlite", key)
    rep.put_file(key, write(tmp_path, "v1", b"v1" * 1000))  # acked by a; the copy to b starts
    assert held.entered.wait(30), "the copy to b never started"
    rep.delete_tree(key)  # b does not hold it yet: only the tombstone can stop the copy
    held.gate.set()
    assert rep.wait_drained(60).drained
    for r in stack.cfg.regions:
        assert RegionStore(r).stat(key) is None, f"region {r.name} holds a deleted object"
    assert rep.list_dir(key.rsplit("/", 1)[0] + "/") == (set(), {})
    with pytest.raises(ObjectNotFound):
        rep.get_file(key, str(tmp_path / "out"))
    rep.close()


def test_put_then_delete_through_the_mlflow_api_in_async_mode(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("XREGION_ARTIFACT_MODE", "async")
    root = f"ordering/{uuid.uuid4().hex}"
    repo = get_artifact_repository(f"xregion:///{root}")
    for i in range(40):
        f = write(tmp_path, f"f{i}.bin", os.urandom(256 * 1024))
        repo.log_artifact(str(f), f"seq{i}")
        repo.delete_artifacts(f"seq{i}")
    assert repo.replicator.wait_drained(120).drained
    assert repo.list_artifacts() == []
    for r in stack.cfg.regions:
        assert list(RegionStore(r).list(root)) == [], f"region {r.name} kept deleted artifacts"
    with pytest.raises(MlflowException):
        repo.download_artifacts("seq0/f0.bin", str(tmp_path / "dl"))


def test_delete_reaches_a_region_whose_breaker_is_open(stack, tmp_path, key):
    rep = Replicator(stack.cfg, tmp_path / "ledger.sqlite", mode="sync")
    b = RegionStore(stack.cfg.region("b"))
    b.put_bytes(key, b"reached only region b")  # e.g. written while a was down
    rep.health.failed("b", seconds=60)  # the breaker skips b for writes; a delete must not
    rep.delete_tree(key.rsplit("/", 1)[0])
    assert b.stat(key) is None
    assert rep.wait_drained(30).drained
    rep.close()


def test_read_and_resync_keep_the_newest_write_when_the_primary_is_stale(stack, tmp_path, key, monkeypatch):
    led = tmp_path / "ledger.sqlite"
    writer = Replicator(stack.cfg, led, mode="sync")
    writer.put_file(key, write(tmp_path, "v1", b"version 1" * 500))
    writer.health.failed("a", seconds=60)  # a's breaker is open: v2 is acknowledged by b alone, a is owed it
    writer.put_file(key, write(tmp_path, "v2", b"version 2" * 500))
    writer.close()
    a, b = RegionStore(stack.cfg.region("a")), RegionStore(stack.cfg.region("b"))
    assert a.get_bytes(key) == b"version 1" * 500 and b.get_bytes(key) == b"version 2" * 500

    monkeypatch.setenv("XREGION_LOCAL_REGION", "a")
    reader = Replicator(stack.cfg, led)
    out = tmp_path / "read"
    assert reader.get_file(key, str(out)) == "b"  # a's copy is older than the newest write: refused
    assert out.read_bytes() == b"version 2" * 500
    result = resync(reader, key.rsplit("/", 1)[0])
    assert result.still_owed == 0 and result.unrepairable == []
    assert a.get_bytes(key) == b.get_bytes(key) == b"version 2" * 500
    report = check(reader.stores, key, reader.outbox, deep=True)
    assert report.ok and report.objects == 1
    reader.close()


def test_a_stale_copy_that_finishes_last_does_not_win(stack, tmp_path, key, monkeypatch):
    monkeypatch.setattr(ledger, "LEASE_SECONDS", 2.0)  # the held copy outlives its first lease
    led = tmp_path / "ledger.sqlite"
    r1, held = held_replicator(stack, led, key)
    r1.put_file(key, write(tmp_path, "v1", b"old" * 1000))
    assert held.entered.wait(30)
    # an overwrite acknowledged by a alone, while r1's copy of v1 is in flight
    writer = Replicator(stack.cfg, led, mode="async")
    writer.health.failed("b", seconds=60)
    writer.put_file(key, write(tmp_path, "v2", b"new" * 1000))
    r2 = Replicator(stack.cfg, led)  # a second replicator draining the same ledger
    r2.drain_once()
    threading.Event().wait(5)  # more than two lease lengths: only renewal keeps r1's lease
    r2.drain_once()
    held.gate.set()
    assert r1.wait_drained(60).drained and r2.wait_drained(60).drained
    b = RegionStore(stack.cfg.region("b"))
    assert b.get_bytes(key) == b"new" * 1000
    assert b.stat(key).gen == r2.outbox.newest(key).gen
    for rep in (r1, r2, writer):
        rep.close()


def test_verify_reports_objects_missing_from_every_region(stack, tmp_path, key):
    rep = Replicator(stack.cfg, tmp_path / "ledger.sqlite", mode="sync")
    rep.put_file(key, write(tmp_path, "v1", b"x" * 100))
    for r in stack.cfg.regions:
        RegionStore(r).delete(key)  # lost everywhere (a store wiped), though acknowledged
    report = check(rep.stores, key.rsplit("/", 1)[0] + "/", rep.outbox)
    assert not report.ok and report.objects == 1
    assert sorted((d.key, d.region, d.problem) for d in report.differences) == [
        (key, "a", "missing"),
        (key, "b", "missing"),
    ]
    assert report.counts["missing"] == 2 and report.verified == {"a": 0, "b": 0}
    rep.close()
