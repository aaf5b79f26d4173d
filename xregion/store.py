"""One region's object store: a small client over one bucket (Litestream's ReplicaClient is the model).

Everything that touches S3 (the artifact repository, the replicator, verify/resync, DR manifests,
drills) goes through this, so timeouts, hashing, checksums and not-found behaviour are decided once.
It speaks plain S3 through boto3, so it works unchanged against MinIO, AWS or moto.

Every copy an xregion writer puts carries two user metadata fields: ``sha256`` (the content hash)
and ``xregion-gen`` (the generation of the write, see plugins/ARTIFACTS.md: which write of a key
is newest). Uploads carry an S3 checksum of their bytes (SHA-256 per request or per part, or
Content-MD5 with ``XREGION_S3_CHECKSUM=md5`` for stores without flexible checksums), so the store
itself refuses bytes that changed on the way.

Not found: ``stat`` returns None, ``get_*`` raise ``ObjectNotFound``, ``delete`` of a missing key
succeeds (S3 semantics). Credentials or permissions the store refuses raise ``AccessError`` (a
configuration mistake, not an outage); a failed condition raises ``PreconditionFailed``; any other
failure of the endpoint raises ``RegionUnavailable``.

The types and errors live in ``xregion/objects.py``, the read-once hashed file in
``xregion/payload.py``, the parallel multipart upload to one or several regions in
``xregion/fanout.py``; this module re-exports what callers import from it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from . import signing
from .config import RegionConfig
from .fanout import Target, put_all
from .objects import (  # noqa: F401  (re-exported: callers import them from here)
    CHUNK,
    GEN_META,
    HASH_META,
    PART,
    AccessError,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    RegionUnavailable,
    Store,
    StoreError,
    sha256_file,
)
from .payload import Payload

ACCESS_CODES = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "403")


# One boto3 session per process for every store's client. A fresh session reads botocore's service
# models again: 140 ms of CPU per client on this machine, against 8 ms from a shared session. The
# registry gate makes a store per region three times per promotion, so fresh sessions were most of
# a promotion's 3-4 s. Sessions are not thread-safe (clients are): clients are made under a lock,
# and a forked child starts with a session and a lock of its own.
_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _forget_session() -> None:
    global _session, _session_lock
    _session, _session_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_session)


def s3_client(**kwargs):
    """An S3 client from the process's shared boto3 session (thread-safe to call)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _not_found(err: ClientError) -> bool:
    return _error_code(err) in ("404", "NoSuchKey", "NotFound")


def _no_bucket(err: Exception) -> bool:
    return "NoSuchBucket" in str(err)


class RegionStore:
    """put / get / stat / list / delete over one region's bucket."""

    def __init__(
        self,
        region: RegionConfig,
        *,
        connect_timeout: float = 2,
        read_timeout: float = float(os.environ.get("XREGION_S3_READ_TIMEOUT", 5)),
        attempts: int = 2,
    ):
        self.region = region
        self.name = region.name
        self.bucket = region.s3.bucket
        key, secret = region.s3.credentials(region.name)
        self.client = s3_client(
            endpoint_url=region.s3.endpoint_url,
            region_name=region.s3.region_name,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=BotoConfig(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
                max_pool_connections=32,  # PART_CONCURRENCY parts of two uploads at once, and reads
                # we send our own checksum (SHA-256 or MD5); botocore must not add a CRC32 beside it
                request_checksum_calculation="when_required",
            ),
        )
        signing.install(self.client)  # the body's known SHA-256 signs it: no second hash of every byte
        self.timeouts = (connect_timeout, read_timeout, attempts)

    def bounded(self, seconds: float) -> RegionStore:
        """The same store with every request bounded by ``seconds`` (connect and each read) and
        tried once: for work that must end by a deadline, such as the drain before a process exits."""
        seconds = max(0.1, seconds)
        connect, read, _ = self.timeouts
        return RegionStore(
            self.region, connect_timeout=min(connect, seconds), read_timeout=min(read, seconds), attempts=1
        )

    def __repr__(self) -> str:
        return f"RegionStore({self.name}: {self.region.s3.endpoint_url}/{self.bucket})"

    def _call(self, fn, *args, key: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            raise self._translate(err, key) from err
        except Boto3Error as err:
            raise RegionUnavailable(f"region {self.name}: {err}") from err
        except (BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name} ({self.region.s3.endpoint_url}) unreachable: {err}") from err

    def _translate(self, err: ClientError, key: str | None) -> StoreError:
        code = _error_code(err)
        if key is not None and _not_found(err):
            return ObjectNotFound(f"{key} not found in region {self.name}")
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{key} changed in region {self.name} while it was written")
        if code in ACCESS_CODES:
            message = err.response.get("Error", {}).get("Message") or code
            return AccessError(f"region {self.name} ({self.bucket}): {code}: {message}", code, message)
        return RegionUnavailable(f"region {self.name}: {err}")

    def _write(self, fn, *args, **kwargs):
        """A write; a store that came back empty (its bucket gone) gets the bucket again, once."""
        try:
            return self._call(fn, *args, **kwargs)
        except StoreError as err:
            if not _no_bucket(err.__cause__ or err):
                raise
        self.ensure_bucket()
        return self._call(fn, *args, **kwargs)

    # --- bucket ------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if _error_code(err) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._translate(err, None) from err
            self._call(self.client.create_bucket, Bucket=self.bucket)
        except (BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name} unreachable: {err}") from err

    def healthy(self) -> bool:
        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
            return True
        except StoreError:
            return False

    # --- writes ------------------------------------------------------------------------------
    def put_payload(
        self,
        key: str,
        payload: Payload,
        *,
        gen: int | None = None,
        extra: dict | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        verify: bool = False,
    ) -> ObjectInfo:
        """Upload ``payload`` with its hash (and generation) in the metadata, every request body
        checked by the store. ``if_match``/``if_none_match`` make the write conditional on the
        copy the caller looked at (an ETag, or no copy at all); ``verify``: see ``fanout.put_all``."""
        target = Target(self, if_match, if_none_match)
        got = put_all({self.name: target}, key, payload, gen=gen, extra=extra, verify=verify)[self.name]
        if isinstance(got, StoreError):
            raise got
        return got

    def put_object_body(self, key: str, body: bytes, args: dict, condition: dict, checksum: dict) -> dict:
        """One PUT (fanout.py sends the parts; callers use put_payload/put_file/put_bytes)."""
        return self._write(
            self.client.put_object, Bucket=self.bucket, Key=key, Body=body, **args, **condition, **checksum, key=key
        )

    def create_upload(self, key: str, args: dict, sha256: bool = True) -> str:
        algorithm = {"ChecksumAlgorithm": "SHA256"} if sha256 else {}
        created = self._write(self.client.create_multipart_upload, Bucket=self.bucket, Key=key, **args, **algorithm)
        return created["UploadId"]

    def upload_part(self, key: str, upload: str, number: int, body: bytes, checksum: dict) -> str:
        got = self._call(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=body,
            **checksum,
        )
        return got["ETag"]

    def complete_upload(self, key: str, upload: str, parts: list[dict], condition: dict) -> dict:
        return self._call(
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": parts},
            **condition,
            key=key,
        )

    def abort_upload(self, key: str, upload: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
        except (ClientError, BotoCoreError, OSError):
            pass  # best effort: the store's lifecycle rules, or nothing (moto), clean the rest

    def put_file(self, key: str, path: str | os.PathLike, sha256: str | None = None, **kw) -> ObjectInfo:
        """Upload a file (multipart above 8 MiB, bounded memory). ``sha256``, when given, must be
        the file's hash: a file that differs from it is refused before anything is sent."""
        with Payload.read(path) as payload:
            if sha256 and payload.sha256 != sha256:
                raise ValueError(f"{path} changed: its sha256 is {payload.sha256}, not the expected {sha256}")
            return self.put_payload(key, payload, **kw)

    def put_bytes(self, key: str, data: bytes, **kw) -> ObjectInfo:
        return self.put_payload(key, Payload.of_bytes(data), **kw)

    # --- reads -------------------------------------------------------------------------------
    def _info(self, key: str, head: dict) -> ObjectInfo:
        meta = head.get("Metadata", {}) or {}
        gen = meta.get(GEN_META)
        return ObjectInfo(
            key,
            head["ContentLength"],
            meta.get(HASH_META),
            head.get("ETag", "").strip('"') or None,
            int(gen) if gen and gen.isdigit() else None,
            None,
            head.get("ContentType"),
            head.get("ContentEncoding"),
            (head["ServerSideEncryption"], head.get("SSEKMSKeyId")) if head.get("ServerSideEncryption") else None,
        )

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(self.client.head_object, Bucket=self.bucket, Key=key, key=key)
        except ObjectNotFound:
            return None
        return self._info(key, head)

    def get_file(self, key: str, path: str | os.PathLike) -> ObjectInfo:
        """Download one copy to ``path``: metadata and bytes from one GET (one version, even while
        the key is overwritten), hashed as they stream. ``sha256`` is the hash of the bytes
        received, ``recorded`` the one the copy's metadata claims."""
        resp = self._call(self.client.get_object, Bucket=self.bucket, Key=key, key=key)
        info = self._info(key, resp)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "wb") as f:
                for block in resp["Body"].iter_chunks(CHUNK):
                    h.update(block)
                    f.write(block)
                    size += len(block)
        except (BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name}: download of {key} failed: {err}") from err
        return replace(info, size=size, sha256=h.hexdigest(), recorded=info.sha256)

    def get_bytes(self, key: str) -> bytes:
        """The bytes of one (small) object, from one GET."""
        resp = self._call(self.client.get_object, Bucket=self.bucket, Key=key, key=key)
        return self._call(resp["Body"].read, key=key)

    def _pages(self, **kwargs):
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **kwargs)
        except ClientError as err:
            raise self._translate(err, None) from err
        except (BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name}: listing {kwargs.get('Prefix')!r} failed: {err}") from err

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (key, size, ETag; call ``stat`` for hash and generation)."""
        for page in self._pages(Prefix=prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"], obj["Size"], etag=obj.get("ETag", "").strip('"') or None)

    def list_dir(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """Immediate children of a directory-like prefix (ending in /): (sub-prefixes, objects)."""
        dirs: list[str] = []
        files: list[ObjectInfo] = []
        for page in self._pages(Prefix=prefix, Delimiter="/"):
            dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            files += [ObjectInfo(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        return dirs, files

    # --- deletes -----------------------------------------------------------------------------
    def delete(self, key: str, if_match: str | None = None) -> None:
        """Delete ``key``; with ``if_match`` only the copy with that ETag (else PreconditionFailed)."""
        try:
            self._call(
                self.client.delete_object, Bucket=self.bucket, Key=key, **Target(self, if_match).condition, key=key
            )
        except ObjectNotFound:
            pass  # conditional delete of a copy that is already gone

    def delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        self.delete_many(keys)
        return len(keys)


def stores(cfg, **kwargs) -> dict[str, RegionStore]:
    """A RegionStore per region, keyed by name, in write order (primary first)."""
    return {r.name: RegionStore(r, **kwargs) for r in cfg.write_order()}
