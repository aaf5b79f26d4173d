"""What users of MLflow's S3 repository notice (issue 13, items 5 and 9): checksums the store can
verify, Content-Type/Encoding, MLFLOW_S3_UPLOAD_EXTRA_ARGS, and S3's refusals mapped to MLflow's
error codes, against real moto endpoints (one of them enforcing IAM)."""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from xregion.config import load_config
from xregion.infra.embedded.supervisor import Service
from xregion.net import free_ports
from xregion.store import RegionStore

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


def capture(store: RegionStore) -> list[tuple[str, dict, bytes]]:
    sent: list[tuple[str, dict, bytes]] = []

    def grab(request, **_):
        body = request.body.getvalue() if hasattr(request.body, "getvalue") else request.body
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent.append((request.url, headers, body))

    for op in ("PutObject", "UploadPart"):
        store.client.meta.events.register(f"before-send.s3.{op}", grab)
    return sent


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize(
    "size, threshold_mib, requests",
    [(100 * 1024, None, 1), (20 << 20, None, 1), (20 << 20, 8, 3)],  # one request up to the threshold (64 MiB)
)
def test_every_upload_request_carries_the_sha256_of_its_body(
    stack, tmp_path, monkeypatch, size, threshold_mib, requests
):
    if threshold_mib:
        monkeypatch.setenv("XREGION_MULTIPART_THRESHOLD_MIB", str(threshold_mib))
    store = RegionStore(stack.cfg.region("a"))
    sent = capture(store)
    f = tmp_path / "obj.bin"
    f.write_bytes(os.urandom(size))
    key = f"parity/{uuid.uuid4().hex}"
    info = store.put_file(key, f)
    assert len(sent) == requests  # one request, or 8 MiB parts
    for _, headers, body in sent:
        digest = hashlib.sha256(body).digest()
        assert headers["x-amz-checksum-sha256"] == b64(digest)
        assert headers["X-Amz-Content-SHA256"] == digest.hex()  # signed with the same hash, not hashed again
    assert store.stat(key).sha256 == info.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert store.get_bytes(key) == f.read_bytes()


def test_content_md5_for_stores_without_flexible_checksums(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("XREGION_S3_CHECKSUM", "md5")
    store = RegionStore(stack.cfg.region("a"))
    sent = capture(store)
    store.put_bytes(f"parity/{uuid.uuid4().hex}", b"md5 checked")
    ((_, headers, body),) = sent
    assert headers["Content-MD5"] == b64(hashlib.md5(body).digest()) and "x-amz-checksum-sha256" not in headers


def test_content_type_encoding_and_extra_args_in_every_region(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("XREGION_ARTIFACT_MODE", "async")  # region b's copies are made by the replicator
    monkeypatch.setenv("MLFLOW_S3_UPLOAD_EXTRA_ARGS", '{"ServerSideEncryption": "AES256"}')
    root = f"parity/{uuid.uuid4().hex}"
    repo = get_artifact_repository(f"xregion:///{root}")
    expected = {
        "notes.txt": ("text/plain", None),
        "table.csv": ("text/csv", None),
        "m.tar.gz": ("application/x-tar", "gzip"),
    }
    for name in expected:
        (tmp_path / name).write_bytes(b"content of " + name.encode())
        repo.log_artifact(str(tmp_path / name))
    assert repo.replicator.wait_drained(60).drained
    for r in stack.cfg.regions:
        client = RegionStore(r).client
        for name, (ctype, encoding) in expected.items():
            head = client.head_object(Bucket=r.s3.bucket, Key=f"{root}/{name}")
            assert (head["ContentType"], head.get("ContentEncoding")) == (ctype, encoding), (r.name, name)
            assert head["ServerSideEncryption"] == "AES256", (r.name, name)


def regions_file(stack, path: Path, buckets: dict[str, str], endpoint: str | None = None, env: str = "") -> Path:
    data = yaml.safe_load(stack.config_path.read_text())
    for r in data["regions"]:
        r["s3"]["bucket"] = buckets[r["name"]]
        if endpoint:
            r["s3"]["endpoint_url"] = endpoint
        if env:
            r["s3"]["access_key_env"], r["s3"]["secret_key_env"] = f"{env}_KEY", f"{env}_SECRET"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def only_region_a(data: dict) -> None:
    """Keep region a alone (two regions on the one IAM endpoint would clash on its port): an artifact-only
    regions file, without the database HA keys, whose quorum rule needs three etcd members."""
    data["regions"] = data["regions"][:1]
    data.pop("witness", None)
    for r in data["regions"]:
        r.pop("etcd", None)
        r.pop("patroni", None)


def test_missing_bucket_is_resource_does_not_exist_not_an_outage(stack, tmp_path, monkeypatch):
    cfg = regions_file(stack, tmp_path / "regions.yaml", {"a": "no-such-bucket-a", "b": "no-such-bucket-b"})
    monkeypatch.setenv("XREGION_CONFIG", str(cfg))
    repo = get_artifact_repository("xregion:///parity/x")
    with pytest.raises(MlflowException) as err:
        repo.list_artifacts()
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert str(err.value.message).startswith("Failed to list artifacts in xregion:///parity/x: ")
    assert "bucket does not exist" in err.value.message and "unavailable" not in err.value.message


ALLOW_S3 = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
WRITER: dict[str, str] = {}


@pytest.fixture(scope="module")
def iam_moto(stack):
    """A moto S3 endpoint enforcing IAM: a user with no permission at all, and its key."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    svc = Service(
        name=f"test-iam-s3-{uuid.uuid4().hex[:6]}",
        region="iam",
        component="s3",
        argv=[str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        listen=("127.0.0.1", port),
        health={"type": "http", "url": f"{url}/moto-api/"},
        env={"PATH": os.environ["PATH"], "INITIAL_NO_AUTH_ACTION_COUNT": "8"},
        start_timeout=30,
    )
    stack.sup.start(svc)
    try:
        anon = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        iam.create_user(UserName="writer")  # the 4 more actions before moto enforces IAM: a user allowed s3:*
        writer = iam.create_access_key(UserName="writer")["AccessKey"]
        arn = iam.create_policy(PolicyName="s3-all", PolicyDocument=ALLOW_S3)["Policy"]["Arn"]
        iam.attach_user_policy(UserName="writer", PolicyArn=arn)
        s3 = boto3.client("s3", **anon)
        for b in ("iam-a", "iam-b"):
            s3.create_bucket(Bucket=b)
        WRITER.update(key=writer["AccessKeyId"], secret=writer["SecretAccessKey"])
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stack.sup.stop(svc.name)


@pytest.mark.parametrize(
    "which, code",
    [("denied", "PERMISSION_DENIED"), ("wrong-secret", "UNAUTHENTICATED"), ("unknown-key", "UNAUTHENTICATED")],
)
def test_refusals_map_like_mlflows_s3_repository(stack, tmp_path, monkeypatch, iam_moto, which, code):
    url, key_id, secret = iam_moto
    creds = {
        "denied": (key_id, secret),
        "wrong-secret": (key_id, "not-the-secret"),
        "unknown-key": ("AKIANOBODY", secret),
    }
    monkeypatch.setenv("IAMT_KEY", creds[which][0])
    monkeypatch.setenv("IAMT_SECRET", creds[which][1])
    cfg = regions_file(stack, tmp_path / f"{which}.yaml", {"a": "iam-a", "b": "iam-b"}, endpoint=url, env="IAMT")
    data = yaml.safe_load(cfg.read_text())
    only_region_a(data)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("XREGION_CONFIG", str(cfg))
    repo = get_artifact_repository(f"xregion:///parity/{which}")
    with pytest.raises(MlflowException) as err:
        repo.list_artifacts()
    assert err.value.error_code == code, err.value.message
    assert err.value.message.startswith(f"Failed to list artifacts in xregion:///parity/{which}: ")
    assert "unavailable in every region" not in err.value.message


@pytest.mark.parametrize("size", [100 * 1024, 20 << 20])
def test_uploads_signed_with_the_known_body_hash_pass_a_store_that_checks_signatures(
    stack, tmp_path, monkeypatch, iam_moto, size
):
    url, _, _ = iam_moto
    monkeypatch.setenv("XREGION_MULTIPART_THRESHOLD_MIB", "8")  # the 20 MiB file in parts
    monkeypatch.setenv("IAMW_KEY", WRITER["key"])
    monkeypatch.setenv("IAMW_SECRET", WRITER["secret"])
    cfg = regions_file(stack, tmp_path / "writer.yaml", {"a": "iam-a", "b": "iam-b"}, endpoint=url, env="IAMW")
    data = yaml.safe_load(cfg.read_text())
    only_region_a(data)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    store = RegionStore(load_config(cfg).region("a"))
    f = tmp_path / "signed.bin"
    f.write_bytes(os.urandom(size))
    key = f"parity/{uuid.uuid4().hex}"
    store.put_file(key, f)
    assert store.get_bytes(key) == f.read_bytes()
