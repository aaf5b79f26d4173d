"""The embedded S3 stores keep their objects on disk: over a kill -9 of the store, over `xregion
down` + `up`; losing a region's disk (`xregion fault wipe`) is reported by `dr verify` and
repaired by `replicate resync`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tests.stacks import Stack, acting_as
from xregion.infra.embedded.bench_s3 import _service
from xregion.infra.embedded.supervisor import Supervisor
from xregion.net import free_ports
from xregion.store import RegionStore

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]
XREGION = str(Path(sys.executable).parent / "xregion")


@pytest.fixture
def store(tmp_path):
    """One persistent S3 endpoint (the embedded stack's program) on a free port."""
    sup = Supervisor(tmp_path / "home")
    svc = _service("t-s3", free_ports(1)[0], tmp_path / "data")
    sup.start(svc)
    yield sup, svc
    sup.stop_all()


def client(svc):
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{svc.listen[1]}",
        aws_access_key_id="t",
        aws_secret_access_key="t",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def snapshot(s3, bucket: str) -> dict[str, dict]:
    """What a client can see of every object: bytes, and the HEAD fields S3 answers with."""
    out = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        key = obj["Key"]
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        out[key] = {
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": head["ContentLength"],
            "etag": head["ETag"],
            "content_type": head["ContentType"],
            "metadata": head["Metadata"],
            "checksums": {k: v for k, v in head.items() if k.startswith("Checksum")},
            "last_modified": head["LastModified"],
            "tags": s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"],
        }
    return out


def test_objects_survive_kill_9_of_the_store(store, tmp_path):
    sup, svc = store
    s3 = client(svc)
    s3.create_bucket(Bucket="kept")
    s3.put_object(
        Bucket="kept", Key="run/a b+c.txt", Body=b"hello", ContentType="text/plain", Metadata={"sha256": "x1"}
    )
    s3.put_object(Bucket="kept", Key="over", Body=b"first")
    s3.put_object(Bucket="kept", Key="over", Body=b"second", Metadata={"sha256": "x2"})
    s3.put_object(Bucket="kept", Key="gone", Body=b"deleted")
    s3.delete_object(Bucket="kept", Key="gone")
    for i in range(4):
        s3.put_object(Bucket="kept", Key=f"batch/{i}", Body=f"b{i}".encode())
    s3.delete_objects(Bucket="kept", Delete={"Objects": [{"Key": "batch/0"}, {"Key": "batch/2"}]})
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 << 20))
    s3.upload_file(  # multipart: three parts, an ETag ending in -3, a composite checksum
        str(big),
        "kept",
        "model/weights.bin",
        ExtraArgs={"Metadata": {"sha256": "x3"}, "ContentType": "application/octet-stream"},
        Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20),
    )
    s3.copy_object(Bucket="kept", Key="copied", CopySource={"Bucket": "kept", "Key": "run/a b+c.txt"})
    s3.put_object_tagging(Bucket="kept", Key="copied", Tagging={"TagSet": [{"Key": "stage", "Value": "prod"}]})
    s3.create_bucket(Bucket="empty-bucket")
    s3.create_bucket(Bucket="dropped")
    s3.delete_bucket(Bucket="dropped")
    before = snapshot(s3, "kept")
    assert set(before) == {"run/a b+c.txt", "over", "batch/1", "batch/3", "model/weights.bin", "copied"}
    assert before["model/weights.bin"]["etag"].endswith('-3"')

    sup.fault("kill", [svc])
    deadline = time.monotonic() + 10
    while sup.state(svc.name) != "dead" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sup.state(svc.name) == "dead"
    sup.stop(svc.name)
    sup.start(svc)

    s3 = client(svc)
    assert snapshot(s3, "kept") == before
    assert s3.get_object(Bucket="kept", Key="over")["Body"].read() == b"second"
    assert s3.get_object(Bucket="kept", Key="model/weights.bin")["Body"].read() == big.read_bytes()
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"kept", "empty-bucket"}


def test_every_acknowledged_write_survives_a_kill_in_the_middle_of_writes(store):
    """Writers overwrite a few keys until the store is killed -9 under them. After the restart
    each key holds a write that no acknowledged write of it follows in time: the newest
    acknowledged one, or one that was in flight when the store died, never an older one."""
    sup, svc = store
    client(svc).create_bucket(Bucket="race")
    ops: list[tuple[str, bytes, float, float]] = []  # key, body, invoked, acknowledged (inf: never)
    stop = threading.Event()

    def writer(w: int) -> None:
        s3 = client(svc)
        for n in range(2000):
            if stop.is_set():
                return
            key, body, t0 = f"k{n % 3}", f"w{w}-{n}".encode(), time.monotonic()
            try:
                s3.put_object(Bucket="race", Key=key, Body=body)
            except Exception:  # the store died under this write: it may or may not be kept
                ops.append((key, body, t0, float("inf")))
                return
            ops.append((key, body, t0, time.monotonic()))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(ops) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    sup.fault("kill", [svc])
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert sum(1 for op in ops if op[3] != float("inf")) >= 200
    sup.stop(svc.name)
    sup.start(svc)
    s3 = client(svc)
    for key in ("k0", "k1", "k2"):
        mine = [op for op in ops if op[0] == key]
        allowed = {b for _, b, _, end in mine if not any(t0 > end for _, _, t0, e in mine if e != float("inf"))}
        got = s3.get_object(Bucket="race", Key=key)["Body"].read()
        assert got in allowed, (key, got, sorted(allowed))


def cli(env, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([XREGION, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def own_stack(private_stack):
    """The package's private stack (tests/infra/conftest.py), started; this process logs runs on it as
    a scientist would. test_stack.py stops and purges it last."""
    home, cfg, env = private_stack
    up = cli(env, "up")
    assert up.returncode == 0, up.stderr
    with acting_as(Stack(home, Path(env["XREGION_CONFIG"])), "scientist"):
        yield home, cfg, env


def log_run(cfg, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    from mlflow import MlflowClient

    client_a = MlflowClient(cfg.primary.mlflow_url)
    run = client_a.create_run(client_a.create_experiment(f"persist-{time.time_ns()}"))
    files = {"notes.txt": b"kept on disk", "model/weights.bin": os.urandom(200_000)}
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        client_a.log_artifact(run.info.run_id, str(path), artifact_path=str(Path(name).parent).strip(".") or None)
    client_a.set_terminated(run.info.run_id)
    return run.info.run_id, files


def dr_verify(env) -> tuple[int, dict]:
    res = cli(env, "dr", "verify", "--json")
    return res.returncode, json.loads(res.stdout)


def test_down_up_keeps_every_artifact(own_stack, tmp_path):
    from mlflow import MlflowClient

    home, cfg, env = own_stack
    run_id, files = log_run(cfg, tmp_path)
    keys = {r.name: sorted(o.key for o in RegionStore(r).list("") if run_id in o.key) for r in cfg.regions}
    assert keys["a"] == keys["b"] and len(keys["a"]) == 2

    assert cli(env, "down").returncode == 0
    assert cli(env, "up").returncode == 0
    for r in cfg.regions:
        assert sorted(o.key for o in RegionStore(r).list("") if run_id in o.key) == keys[r.name]
    got = MlflowClient(cfg.region("b").mlflow_url).download_artifacts(run_id, "", str(tmp_path / "dl"))
    for name, data in files.items():
        assert (Path(got) / name).read_bytes() == data
    rc, report = dr_verify(env)
    assert rc == 0 and report["ok"], report["problems"]


def test_wipe_loses_a_region_dr_verify_reports_it_and_resync_restores(own_stack, tmp_path):
    home, cfg, env = own_stack
    run_id, files = log_run(cfg, tmp_path)
    b = RegionStore(cfg.region("b"))
    ours = sorted(o.key for o in b.list("") if run_id in o.key)
    everything = sorted(o.key for o in b.list(""))
    assert len(ours) == len(files) and len(everything) >= len(ours)

    wiped = cli(env, "fault", "wipe", "b", "s3")
    assert wiped.returncode == 0, wiped.stderr
    assert list(b.list("")) == []  # the store is back, empty, and answers
    events = [json.loads(line) for line in (home / "events.jsonl").read_text().splitlines()]
    assert [e["service"] for e in events if e["kind"] == "fault.wipe"] == ["b-s3"]

    rc, report = dr_verify(env)
    assert rc == 1 and not report["ok"]
    missing_b = {m["key"] for m in report["missing"] if m["region"] == "b"}
    assert set(everything) <= missing_b  # every object the region held and the database references
    assert not {m["key"] for m in report["missing"] if m["region"] == "a"} & set(everything)

    fixed = cli(env, "replicate", "resync", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["still_owed"] == 0
    for key in ours:
        assert b.get_bytes(key) == RegionStore(cfg.region("a")).get_bytes(key)
    rc, report = dr_verify(env)
    assert rc == 0 and report["ok"], report["problems"]


def test_wipe_refuses_components_without_data(own_stack):
    _, _, env = own_stack
    res = cli(env, "fault", "wipe", "a", "postgres")
    assert res.returncode == 2 and "only S3 stores" in res.stderr
