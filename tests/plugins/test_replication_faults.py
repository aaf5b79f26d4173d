"""Regions frozen (SIGSTOP) and killed (-9) during writes, a replicator killed mid-upload, a
corrupt copy: after recovery and resync nothing is missing and every hash matches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from xregion.infra.embedded import stack as embedded
from xregion.plugins.replication import Replicator
from xregion.plugins.verify import ResyncResult, resync, verify
from xregion.store import RegionStore, sha256_file

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]
XREGION = str(Path(sys.executable).parent / "xregion")


def files(tmp_path: Path, n: int, size: int = 64 * 1024) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def fault(stack, action: str, region: str, component: str = "s3") -> None:
    stack.sup.fault(action, embedded.select(stack.cfg, stack.home, stack.sup, region, component))


def heal(stack, rep: Replicator) -> ResyncResult:
    """Bring every S3 endpoint back (a killed moto loses its data) and resync everything."""
    for r in stack.cfg.regions:
        if stack.sup.state(f"{r.name}-s3") == "frozen":
            fault(stack, "thaw", r.name)
        elif stack.sup.state(f"{r.name}-s3") != "running":
            fault(stack, "restart", r.name)
    rep.reset_health()  # forget what the breaker learnt during the fault
    return resync(rep)


def assert_identical(stack, prefix: str, expected: dict[str, str]) -> None:
    for r in stack.cfg.regions:
        store = RegionStore(r)
        keys = {o.key for o in store.list(prefix)}
        assert keys == set(expected), f"region {r.name}: {sorted(set(expected) ^ keys)}"
        for key, digest in expected.items():
            assert store.stat(key).sha256 == digest
    count, diffs = verify(Replicator(stack.cfg, stack.home / "verify.sqlite"), prefix, deep=True)
    assert (count, diffs) == (len(expected), [])


@pytest.fixture
def prefix():
    return f"faults/{uuid.uuid4().hex}"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_region_frozen_during_writes(stack, tmp_path, prefix, mode):
    rep = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode=mode)
    data = files(tmp_path, 5)
    fault(stack, "freeze", "b")
    try:
        for p in data:
            rep.put_file(f"{prefix}/{p.name}", p)  # returns: a frozen region is owed, not waited for
        owed = rep.outbox.pending()
        assert owed["b"]["objects"] == 5 and "a" not in owed
        assert {o.key for o in RegionStore(stack.cfg.region("a")).list(prefix)} == {f"{prefix}/{p.name}" for p in data}
    finally:
        result = heal(stack, rep)
    assert result.still_owed == 0
    assert_identical(stack, prefix, {f"{prefix}/{p.name}": sha256_file(p) for p in data})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_region_killed_during_writes(stack, tmp_path, prefix, mode):
    rep = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode=mode)
    data = files(tmp_path, 12)
    errors = []

    def writer():
        try:
            for p in data:
                rep.put_file(f"{prefix}/{p.name}", p)
                time.sleep(0.05)
        except Exception as exc:  # the test fails below if any write failed
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.2)
    fault(stack, "kill", "b")  # moto keeps objects in memory: region b loses everything it had
    t.join(timeout=300)
    try:
        assert errors == []
        assert rep.outbox.pending().get("b", {}).get("objects", 0) >= 1
    finally:
        result = heal(stack, rep)
    assert result.still_owed == 0 and result.unrepairable == []
    assert_identical(stack, prefix, {f"{prefix}/{p.name}": sha256_file(p) for p in data})


def test_primary_store_down_writes_go_to_next_region(stack, tmp_path, prefix):
    rep = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode="sync")
    data = files(tmp_path, 3)
    fault(stack, "kill", "a")
    try:
        for p in data:
            rep.put_file(f"{prefix}/{p.name}", p)
        assert {o.key for o in RegionStore(stack.cfg.region("b")).list(prefix)} == {f"{prefix}/{p.name}" for p in data}
        assert rep.outbox.pending()["a"]["objects"] == 3
    finally:
        heal(stack, rep)
    assert_identical(stack, prefix, {f"{prefix}/{p.name}": sha256_file(p) for p in data})


def test_delete_while_region_down_reaches_it_later(stack, tmp_path, prefix):
    rep = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode="sync")
    data = files(tmp_path, 3)
    for p in data:
        rep.put_file(f"{prefix}/{p.name}", p)
    fault(stack, "freeze", "b")
    try:
        rep.delete_tree(prefix)
        assert rep.outbox.pending()["b"]["objects"] == 3
    finally:
        fault(stack, "thaw", "b")
    rep.reset_health()
    assert rep.wait_replicated(timeout=60)
    for r in stack.cfg.regions:
        assert list(RegionStore(r).list(prefix)) == []


REPLICATOR_SCRIPT = """
import sys, time
from pathlib import Path
from xregion.config import load_config
from xregion.plugins.replication import Replicator
rep = Replicator(load_config(), Path(sys.argv[1]), mode="async")
rep.drain_once = lambda limit=16, _orig=rep.drain_once: _orig(limit=1)  # one copy at a time
rep.kick = lambda: None  # no background worker: acknowledge every write, then pay in this thread
for p in sys.argv[3:]:
    rep.put_file(sys.argv[2] + "/" + Path(p).name, p)
print("written", flush=True)
sys.stdin.readline()  # the test watches the ledger before the copies start
rep.wait_replicated(timeout=600)
"""


def test_replicator_killed_mid_upload_then_resync(stack, tmp_path, prefix):
    data = files(tmp_path, 6, size=12 << 20)  # multipart-sized: the kill lands inside an upload
    outbox = stack.home / f"outbox-{uuid.uuid4().hex}.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLICATOR_SCRIPT, str(outbox), prefix, *map(str, data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **stack.env()},
    )
    assert proc.stdout.readline().strip() == "written"
    rep = Replicator(stack.cfg, outbox)
    proc.stdin.write("go\n")  # only now may copies start, so none can finish before we watch
    proc.stdin.flush()
    deadline = time.time() + 120
    in_flight = False
    while time.time() < deadline and proc.poll() is None and not in_flight:
        # a copy to b is leased, i.e. in flight: kill the replicator in the middle of it
        in_flight = (
            rep.outbox._conn().execute("select count(*) from owed where lease_until > ?", (time.time(),)).fetchone()[0]
            > 0
        )
        time.sleep(0.005)
    assert in_flight, "the replicator never started a copy"
    proc.kill()
    proc.wait()
    assert rep.outbox.count() >= 1  # the kill left work owed, durably
    missing_before = len(data) - len(list(RegionStore(stack.cfg.region("b")).list(prefix)))
    assert missing_before >= 1

    result = subprocess.run(
        [XREGION, "replicate", "resync", "--json", "--prefix", prefix],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["still_owed"] == 0
    rep.wait_replicated(timeout=120)  # the killed process's own ledger is paid by whoever opens it
    assert rep.outbox.count() == 0
    assert_identical(stack, prefix, {f"{prefix}/{p.name}": sha256_file(p) for p in data})


def test_corrupt_copy_detected_by_verify_and_on_read_and_repaired(stack, tmp_path, prefix, monkeypatch):
    writer = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode="sync")
    (good,) = files(tmp_path, 1, size=4096)
    key = f"{prefix}/{good.name}"
    writer.put_file(key, good)
    b = RegionStore(stack.cfg.region("b"))
    recorded = b.stat(key).sha256

    def corrupt():  # silent corruption: same size, same recorded hash, different bytes
        b.client.put_object(Bucket=b.bucket, Key=key, Body=os.urandom(4096), Metadata={"sha256": recorded})

    corrupt()
    cli = [XREGION, "replicate", "verify", "--json", "--prefix", prefix]
    env = {**os.environ, **stack.env()}
    bad = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    diffs = json.loads(bad.stdout)["differences"]
    assert [(d["key"], d["region"], d["problem"], d["good_source"]) for d in diffs] == [(key, "b", "corrupt", "a")]
    fixed = subprocess.run(
        [XREGION, "replicate", "resync", "--prefix", prefix], env=env, capture_output=True, text=True, timeout=120
    )
    assert fixed.returncode == 0, fixed.stderr
    clean = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and json.loads(clean.stdout)["differences"] == []
    assert b.get_bytes(key) == good.read_bytes()

    corrupt()
    monkeypatch.setenv("XREGION_LOCAL_REGION", "b")
    reader = Replicator(stack.cfg, tmp_path / "reader.sqlite")
    flagged = []
    reader.on_repair = lambda k, region: flagged.append((k, region))
    out = tmp_path / "read.bin"
    assert reader.get_file(key, str(out)) == "a"  # the corrupt local copy was refused
    assert out.read_bytes() == good.read_bytes()
    assert flagged == [(key, "b")]
    assert reader.wait_replicated(timeout=60)  # the flagged repair is paid
    assert b.get_bytes(key) == good.read_bytes()


def test_replication_metrics_are_exported(stack, tmp_path, prefix):
    rep = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode="async")
    before = REGISTRY.get_sample_value("xregion_replication_lag_seconds_count") or 0
    for p in files(tmp_path, 3):
        rep.put_file(f"{prefix}/{p.name}", p)
    assert rep.wait_replicated(timeout=60)
    assert REGISTRY.get_sample_value("xregion_replication_lag_seconds_count") >= before + 3
    assert REGISTRY.get_sample_value("xregion_replication_pending_objects", {"region": "b"}) == 0


def test_a_store_that_comes_back_empty_is_written_again(stack, tmp_path, prefix):
    """A restarted S3 endpoint without its bucket (lost disk): writes recreate it, never fail."""
    rep = Replicator(stack.cfg, tmp_path / "outbox.sqlite", mode="sync")
    b = RegionStore(stack.cfg.region("b"))
    (p,) = files(tmp_path, 1)
    try:
        b.delete_prefix("")
        b.client.delete_bucket(Bucket=b.bucket)
        rep.put_file(f"{prefix}/{p.name}", p)
        assert b.stat(f"{prefix}/{p.name}").sha256 == sha256_file(p)
    finally:
        assert heal(stack, rep).still_owed == 0
