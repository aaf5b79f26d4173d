"""The upload path against real S3 endpoints: each part read once for every region, S3-verified
SHA-256 checksums and generations on every copy, and async writes paid from the writer's own
bytes (seeds) without ever replicating bytes that changed after the write."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

import pytest

from xregion.net import free_port
from xregion.plugins.replication import Replicator
from xregion.store import RegionStore

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]
MiB = 2**20


@pytest.fixture
def multipart(monkeypatch):
    monkeypatch.setenv("XREGION_MULTIPART_THRESHOLD_MIB", "8")  # 8 MiB parts above 8 MiB


def quiet(rep: Replicator) -> Replicator:
    """No background worker: the test pays the ledger itself, after it changed the world."""
    rep._stop.set()
    return rep


def test_each_part_is_read_once_for_every_region(stack, tmp_path, multipart):
    rep = Replicator(stack.cfg, tmp_path / "ledger.sqlite", mode="sync")
    bodies: dict[str, dict[int, bytes]] = {name: {} for name in rep.stores}
    for name, store in rep.stores.items():

        def grab(params, region=name, **_):
            bodies[region][params["PartNumber"]] = params["Body"]

        store.client.meta.events.register("before-parameter-build.s3.UploadPart", grab)
    f = tmp_path / "model.bin"
    data = os.urandom(20 * MiB + 1)
    f.write_bytes(data)
    key = f"uploads/{uuid.uuid4().hex}/model.bin"
    info = rep.put_file(key, f)
    a, b = bodies["a"], bodies["b"]
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert all(a[n] is b[n] for n in a)  # one buffer per part, sent to both regions
    parts = [data[i : i + 8 * MiB] for i in range(0, len(data), 8 * MiB)]
    composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest())
    for r in stack.cfg.regions:
        store = RegionStore(r)
        head = store.client.head_object(Bucket=r.s3.bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"].split("-")[0] == composite.decode()  # SHA-256 per part, kept by the store
        got = store.stat(key)
        assert (got.sha256, got.gen) == (hashlib.sha256(data).hexdigest(), info.gen)
        assert store.get_bytes(key) == data
    rep.close()


def test_an_async_write_pays_the_other_regions_from_its_own_bytes(stack, tmp_path, multipart):
    rep = quiet(Replicator(stack.cfg, tmp_path / "ledger.sqlite", mode="async"))
    f = tmp_path / "model.bin"
    data = os.urandom(17 * MiB)
    f.write_bytes(data)
    key = f"uploads/{uuid.uuid4().hex}/model.bin"
    rep.put_file(key, f)
    b = RegionStore(stack.cfg.region("b"))
    assert b.stat(key) is None and rep.outbox.count() == 1
    f.unlink()  # the caller's temporary file is gone (an MLflow server's upload directory)
    # and region a cannot serve a copy (it is down): only the writer's own bytes can pay b. (A
    # region that answers without the key is another writer's delete: plugins/reconcile.py.)
    down = stack.cfg.region("a").model_copy(
        update={
            "s3": stack.cfg.region("a").s3.model_copy(
                update={"endpoint_url": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
            )
        }
    )
    rep.stores["a"] = RegionStore(down, connect_timeout=0.5, attempts=1)
    assert rep.wait_drained(60).drained
    assert b.get_bytes(key) == data and b.stat(key).sha256 == hashlib.sha256(data).hexdigest()
    assert len(rep.seeds) == 0  # dropped once paid
    rep.close()


def test_a_file_changed_after_an_async_write_is_never_replicated(stack, tmp_path, multipart):
    rep = quiet(Replicator(stack.cfg, tmp_path / "ledger.sqlite", mode="async"))
    f = tmp_path / "model.bin"
    data = os.urandom(17 * MiB)
    f.write_bytes(data)
    key = f"uploads/{uuid.uuid4().hex}/model.bin"
    rep.put_file(key, f)
    with open(f, "r+b") as out:  # the caller rewrites its file in place after the write returned
        out.seek(12 * MiB)
        out.write(b"not what was written")
    assert rep.wait_drained(60).drained
    b = RegionStore(stack.cfg.region("b"))
    assert b.get_bytes(key) == data  # the written bytes, copied from region a; not the file's new ones
    rep.close()
