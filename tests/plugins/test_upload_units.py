"""The upload path's parts without a stack: the signer, the read-once payload, seeds and pacing.

Real components only: botocore's own SigV4 signer is the reference the known-payload signer must
match, payloads read real files, the ledger is a real SQLite file."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import time

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from xregion.payload import Payload, SourceChanged
from xregion.plugins.outbox import Outbox
from xregion.plugins.seeds import Seeds
from xregion.signing import KnownPayloadS3SigV4Auth

MiB = 2**20


def signed(auth_cls, body: bytes, checksum: bytes, monkeypatch) -> dict:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 11, 30, 12, 0, 0))
    req = AWSRequest("PUT", "http://127.0.0.1:9/bucket/key", data=body)
    req.headers["x-amz-checksum-sha256"] = base64.b64encode(checksum).decode()
    req.context["client_config"] = None
    auth_cls(Credentials("AKIDEXAMPLE", "secret"), "s3", "us-east-1").add_auth(req)
    return dict(req.headers)


def test_the_known_payload_signature_is_botocores_own_signature(monkeypatch):
    body = os.urandom(4096)
    digest = hashlib.sha256(body).digest()
    ours = signed(KnownPayloadS3SigV4Auth, body, digest, monkeypatch)
    theirs = signed(botocore.auth.S3SigV4Auth, body, digest, monkeypatch)
    assert ours["X-Amz-Content-SHA256"] == theirs["X-Amz-Content-SHA256"] == digest.hex()
    assert ours["Authorization"] == theirs["Authorization"]


def test_a_checksum_that_lies_signs_a_request_the_store_refuses(monkeypatch):
    body, other = os.urandom(4096), os.urandom(4096)
    lie = hashlib.sha256(other).digest()
    ours = signed(KnownPayloadS3SigV4Auth, body, lie, monkeypatch)
    honest = signed(botocore.auth.S3SigV4Auth, body, lie, monkeypatch)
    # the signature covers the claimed hash, so a store that checks it (AWS, MinIO) refuses the body
    assert ours["X-Amz-Content-SHA256"] == lie.hex() != honest["X-Amz-Content-SHA256"]
    assert ours["Authorization"] != honest["Authorization"]


def test_a_small_file_is_hashed_once_and_md5_only_in_md5_mode(tmp_path, monkeypatch):
    f = tmp_path / "small.bin"
    f.write_bytes(os.urandom(3 * MiB))
    p = Payload.read(f)
    assert p.parts == 1 and p.data == f.read_bytes() and p.fd is None
    assert p.part_digests == (bytes.fromhex(p.sha256),) and p.part_md5s == ()
    assert p.checksum(0) == {"ChecksumSHA256": base64.b64encode(bytes.fromhex(p.sha256)).decode()}
    monkeypatch.setenv("XREGION_S3_CHECKSUM", "md5")
    m = Payload.read(f)
    assert m.part_md5s == (hashlib.md5(f.read_bytes()).digest(),) and "ContentMD5" in m.checksum(0)


def test_up_to_the_threshold_one_request_above_it_parts(tmp_path, monkeypatch):
    f = tmp_path / "big.bin"
    data = os.urandom(20 * MiB + 5)
    f.write_bytes(data)
    assert Payload.read(f).parts == 1  # the default threshold is 64 MiB
    monkeypatch.setenv("XREGION_MULTIPART_THRESHOLD_MIB", "8")
    with Payload.read(f) as p:
        assert p.parts == 3 and p.data is None and p.sha256 == hashlib.sha256(data).hexdigest()
        chunks = [data[i : i + 8 * MiB] for i in range(0, len(data), 8 * MiB)]
        assert p.part_digests == tuple(hashlib.sha256(c).digest() for c in chunks)
        assert [p.part(n) for n in range(3)] == chunks


def test_a_multipart_payload_survives_the_removal_of_its_file_and_refuses_a_changed_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XREGION_MULTIPART_THRESHOLD_MIB", "8")
    f = tmp_path / "big.bin"
    data = os.urandom(17 * MiB)
    f.write_bytes(data)
    kept = Payload.read(f)
    f.unlink()  # as an MLflow server's temporary upload directory goes away
    assert b"".join(kept.verified_part(n) for n in range(kept.parts)) == data
    kept.close()
    kept.close()  # idempotent: a descriptor number is never closed twice

    f.write_bytes(data)
    changed = Payload.read(f)
    with open(f, "r+b") as out:
        out.seek(9 * MiB)
        out.write(b"changed in place")
    assert changed.verified_part(0) == data[: 8 * MiB]
    with pytest.raises(SourceChanged):
        changed.verified_part(1)
    changed.close()


def test_seeds_are_bounded_and_dropped_once_every_region_is_paid(tmp_path):
    seeds = Seeds(max_bytes=10, max_files=1)
    small = Payload.of_bytes(b"12345678")
    assert seeds.keep("k1", 1, small, {}, {"b", "c"})
    assert not seeds.keep("k2", 1, Payload.of_bytes(b"123"), {}, {"b"})  # over the byte budget
    assert seeds.get("k1", 1, small.sha256) is not None
    assert seeds.get("k1", 2, small.sha256) is None  # another generation: never this seed
    seeds.paid("k1", "b")
    assert seeds.get("k1", 1, small.sha256) is not None
    seeds.paid("k1", "c")
    assert seeds.get("k1", 1, small.sha256) is None and len(seeds) == 0


def test_pacing_leases_only_the_copies_that_cannot_wait(tmp_path):
    led = Outbox(tmp_path / "ledger.sqlite")
    now = time.time()
    led.owe("put", "young-small", "b", size=1 * MiB, created=now)
    led.owe("put", "young-large", "b", size=100 * MiB, created=now)  # 100 MiB at 32 MiB/s: 3 s > 1.5 s
    led.owe("put", "old-small", "b", size=1, created=now - 2)
    due = {i.key for i in led.lease(due=(1.5, 32 * MiB))}
    assert due == {"young-large", "old-small"}
    assert {i.key for i in led.lease()} == {"young-small"}  # unpaced: everything


def test_region_stores_sign_with_the_checksum_they_send_not_a_second_hash():
    """What a RegionStore sends: the claimed SHA-256 is the one signed (botocore would hash the body
    again and sign that); captured before it leaves, no server needed."""
    from botocore.awsrequest import AWSResponse

    class RawBody:
        def stream(self, *_, **__):
            yield b""

    from xregion.config import EMBEDDED_CONFIG, load_config
    from xregion.store import RegionStore

    store = RegionStore(load_config(EMBEDDED_CONFIG).regions[0])
    sent = []

    def capture(request, **_):
        sent.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, RawBody())

    store.client.meta.events.register("before-send.s3.PutObject", capture)
    body, lie = b"the body", hashlib.sha256(b"another body").digest()
    store.put_object_body("k", body, {}, {}, {"ChecksumSHA256": base64.b64encode(lie).decode()})
    assert sent[0]["X-Amz-Content-SHA256"] == lie.hex() != hashlib.sha256(body).hexdigest()
