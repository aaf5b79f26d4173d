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
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .config import RegionConfig

HASH_META = "sha256"  # user metadata key (x-amz-meta-sha256) holding the content hash recorded at write
GEN_META = "xregion-gen"  # user metadata key holding the generation of the write (plugins/ARTIFACTS.md)
CHUNK = 1024 * 1024
PART = 8 * CHUNK  # multipart threshold and part size (boto3's defaults): memory bounded by parts in flight
ACCESS_CODES = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "403")


class StoreError(Exception):
    """Base for region store failures."""


class ObjectNotFound(StoreError):
    pass


class RegionUnavailable(StoreError):
    """The region's endpoint did not answer or failed; the caller may try another region."""


class AccessError(StoreError):
    """The store answered and refused: bad credentials, no permission, no such bucket.

    ``code`` is S3's error code, ``s3_message`` its message: callers map them (MLflow's S3
    repository does the same) instead of reporting an outage."""

    def __init__(self, message: str, code: str, s3_message: str):
        super().__init__(message)
        self.code = code
        self.s3_message = s3_message


class PreconditionFailed(StoreError):
    """A conditional write or delete found the object changed since it was looked at."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # recorded hash (stat/list) or hash of the bytes received (get_file)
    etag: str | None = None  # computed by the store from the bytes it holds (MD5 for single-part)
    gen: int | None = None  # generation of the write that made this copy (None: unknown, e.g. listing)
    recorded: str | None = None  # get_file: the hash the copy's metadata records
    content_type: str | None = None
    content_encoding: str | None = None

    @property
    def upload_args(self) -> dict:
        """The headers a copy of this object must carry again."""
        args = {"ContentType": self.content_type} if self.content_type else {}
        return args | ({"ContentEncoding": self.content_encoding} if self.content_encoding else {})


class Store(Protocol):
    """What the replicator, verify and DR need of one region's store (RegionStore implements it)."""

    name: str

    def ensure_bucket(self) -> None: ...
    def healthy(self) -> bool: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def get_file(self, key: str, path: str | os.PathLike) -> ObjectInfo: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: str | os.PathLike, sha256: str | None = None, **kw) -> ObjectInfo: ...
    def put_bytes(self, key: str, data: bytes, **kw) -> ObjectInfo: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def list_dir(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]: ...
    def delete(self, key: str, if_match: str | None = None) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Payload:
    """A file read once for every region it goes to: its hash, and the S3 checksum of each part.

    Small files (one request) are held in memory, hashed as they are read and sent from that one
    buffer to every region. Multipart files are read once here to hash them whole and per part
    (the whole-file hash must be in the metadata of CreateMultipartUpload, before any part is
    sent); each part is read again as it is sent, and the store checks it against its digest."""

    path: str
    size: int
    sha256: str
    data: bytes | None  # the whole body when it fits in one request
    part_digests: tuple[bytes, ...]  # raw SHA-256 of each part (single part: the body's)
    part_md5s: tuple[bytes, ...]

    @classmethod
    def read(cls, path: str | os.PathLike) -> Payload:
        path = str(path)
        size = os.path.getsize(path)
        whole = hashlib.sha256()
        digests, md5s = [], []
        data = None
        with open(path, "rb") as f:
            while True:
                part = f.read(PART)
                if not part and digests:
                    break
                whole.update(part)
                digests.append(hashlib.sha256(part).digest())
                md5s.append(hashlib.md5(part, usedforsecurity=False).digest())
                if size <= PART:
                    data = part
                    break
        return cls(path, size, whole.hexdigest(), data, tuple(digests), tuple(md5s))

    @classmethod
    def of_bytes(cls, data: bytes) -> Payload:
        digest = hashlib.sha256(data).digest()
        return cls("", len(data), digest.hex(), data, (digest,), (hashlib.md5(data, usedforsecurity=False).digest(),))

    def part(self, n: int) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(n * PART)
            return f.read(PART)


def _checksum_args(digest: bytes, md5: bytes) -> dict:
    """The S3-verified checksum of one request body: SHA-256, or Content-MD5 for older stores."""
    if os.environ.get("XREGION_S3_CHECKSUM", "sha256").lower() == "md5":
        return {"ContentMD5": base64.b64encode(md5).decode()}
    return {"ChecksumSHA256": base64.b64encode(digest).decode()}


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _not_found(err: ClientError) -> bool:
    return _error_code(err) in ("404", "NoSuchKey", "NotFound")


def _no_bucket(err: Exception) -> bool:
    return "NoSuchBucket" in str(err)


def _condition(if_match: str | None, if_none_match: bool) -> dict:
    if if_match:
        return {"IfMatch": f'"{if_match}"'}
    return {"IfNoneMatch": "*"} if if_none_match else {}


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
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=region.s3.endpoint_url,
            region_name=region.s3.region_name,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=BotoConfig(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
                max_pool_connections=16,
                # we send our own checksum (SHA-256 or MD5); botocore must not add a CRC32 beside it
                request_checksum_calculation="when_required",
            ),
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
    ) -> ObjectInfo:
        """Upload ``payload`` with its hash (and generation) in the metadata, every request body
        checked by the store. ``if_match``/``if_none_match`` make the write conditional on the
        copy the caller looked at (an ETag, or no copy at all)."""
        meta = {HASH_META: payload.sha256} | ({GEN_META: str(gen)} if gen is not None else {})
        args = {**(extra or {}), "Metadata": {**(extra or {}).get("Metadata", {}), **meta}}
        cond = _condition(if_match, if_none_match)
        if len(payload.part_digests) == 1:
            body = payload.part(0)
            head = self._write(
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=body,
                **args,
                **cond,
                **_checksum_args(payload.part_digests[0], payload.part_md5s[0]),
                key=key,
            )
        else:
            head = self._multipart(key, payload, args, cond)
        etag = head.get("ETag", "").strip('"') or None
        return ObjectInfo(key, payload.size, payload.sha256, etag, gen, None, args.get("ContentType"))

    def _multipart(self, key: str, payload: Payload, args: dict, cond: dict) -> dict:
        md5 = os.environ.get("XREGION_S3_CHECKSUM", "sha256").lower() == "md5"
        created = self._write(
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            **args,
            **({} if md5 else {"ChecksumAlgorithm": "SHA256"}),
        )
        upload = created["UploadId"]
        try:
            parts = []
            for n, (digest, md5sum) in enumerate(zip(payload.part_digests, payload.part_md5s, strict=True)):
                check = _checksum_args(digest, md5sum)
                got = self._call(
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=n + 1,
                    Body=payload.part(n),
                    **check,
                )
                parts.append(
                    {"PartNumber": n + 1, "ETag": got["ETag"], **{k: v for k, v in check.items() if k != "ContentMD5"}}
                )
            return self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                **cond,
                key=key,
            )
        except BaseException:
            try:  # an abandoned upload holds storage until aborted
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except (ClientError, BotoCoreError, OSError):
                pass
            raise

    def put_file(self, key: str, path: str | os.PathLike, sha256: str | None = None, **kw) -> ObjectInfo:
        """Upload a file (multipart above 8 MiB, bounded memory). ``sha256``, when given, must be
        the file's hash: a file that differs from it is refused before anything is sent."""
        payload = Payload.read(path)
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
        buf = io.BytesIO()
        self._call(self.client.download_fileobj, self.bucket, key, buf, key=key)
        return buf.getvalue()

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
            self._call(self.client.delete_object, Bucket=self.bucket, Key=key, **_condition(if_match, False), key=key)
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
