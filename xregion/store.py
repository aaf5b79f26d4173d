"""One region's object store: a small client over one bucket (Litestream's ReplicaClient is the model).

Everything that touches S3 (the artifact repository, the replicator, verify/resync, DR manifests,
drills) goes through this, so timeouts, hashing and not-found behaviour are decided once.
It speaks plain S3 through boto3/s3transfer, so it works unchanged against MinIO, AWS or moto.

Not found: ``stat`` returns None, ``get_*`` raise ``ObjectNotFound``, ``delete`` of a missing key
succeeds (S3 semantics). Any other failure of the endpoint raises ``RegionUnavailable``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .config import RegionConfig

HASH_META = "sha256"  # user metadata key (x-amz-meta-sha256) holding the content hash recorded at write
CHUNK = 1024 * 1024
# boto3's defaults (8 MiB parts, 10 threads): memory stays under max_concurrency parts per transfer
TRANSFER = TransferConfig(multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK, max_concurrency=10)


class StoreError(Exception):
    """Base for region store failures."""


class ObjectNotFound(StoreError):
    pass


class RegionUnavailable(StoreError):
    """The region's endpoint did not answer or failed; the caller may try another region."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # None when listed without metadata, or written by something else
    etag: str | None = None  # computed by the store from the bytes it holds (MD5 for single-part)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _not_found(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


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
            ),
        )

    def __repr__(self) -> str:
        return f"RegionStore({self.name}: {self.region.s3.endpoint_url}/{self.bucket})"

    def _call(self, fn, *args, key: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            if key is not None and _not_found(err):
                raise ObjectNotFound(f"{key} not found in region {self.name}") from None
            raise RegionUnavailable(f"region {self.name}: {err}") from err
        except Boto3Error as err:  # s3transfer wraps the ClientError of a failed upload
            raise RegionUnavailable(f"region {self.name}: {err}") from err
        except (BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name} ({self.region.s3.endpoint_url}) unreachable: {err}") from err

    def _write(self, fn, *args, **kwargs):
        """A write; a store that came back empty (its bucket gone) gets the bucket again, once."""
        try:
            return self._call(fn, *args, **kwargs)
        except RegionUnavailable as err:
            if not _no_bucket(err.__cause__ or err):
                raise
        self.ensure_bucket()
        return self._call(fn, *args, **kwargs)

    # --- bucket ------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise RegionUnavailable(f"region {self.name}: {err}") from err
            self._call(self.client.create_bucket, Bucket=self.bucket)
        except (BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name} unreachable: {err}") from err

    def healthy(self) -> bool:
        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
            return True
        except StoreError:
            return False

    # --- objects -----------------------------------------------------------------------------
    def put_file(self, key: str, path: str | os.PathLike, sha256: str | None = None) -> ObjectInfo:
        """Upload through s3transfer (multipart above 8 MiB, bounded memory), recording the hash."""
        digest = sha256 or sha256_file(path)
        self._write(
            self.client.upload_file,
            str(path),
            self.bucket,
            key,
            ExtraArgs={"Metadata": {HASH_META: digest}},
            Config=TRANSFER,
        )
        return ObjectInfo(key, os.path.getsize(path), digest)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        self._write(self.client.put_object, Bucket=self.bucket, Key=key, Body=data, Metadata={HASH_META: digest})
        return ObjectInfo(key, len(data), digest)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(self.client.head_object, Bucket=self.bucket, Key=key, key=key)
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key, head["ContentLength"], head.get("Metadata", {}).get(HASH_META), head.get("ETag", "").strip('"') or None
        )

    def get_file(self, key: str, path: str | os.PathLike) -> ObjectInfo:
        """Download to ``path`` and return what was read, with the hash of the bytes actually received."""
        info = self.stat(key)
        if info is None:
            raise ObjectNotFound(f"{key} not found in region {self.name}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._call(self.client.download_file, self.bucket, key, str(path), Config=TRANSFER, key=key)
        return ObjectInfo(key, os.path.getsize(path), sha256_file(path))

    def get_bytes(self, key: str) -> bytes:
        buf = io.BytesIO()
        self._call(self.client.download_fileobj, self.bucket, key, buf, key=key)
        return buf.getvalue()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (key and size; call ``stat`` for the recorded hash)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], obj["Size"], etag=obj.get("ETag", "").strip('"') or None)
        except (ClientError, BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name}: listing {prefix!r} failed: {err}") from err

    def list_dir(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """Immediate children of a directory-like prefix (ending in /): (sub-prefixes, objects)."""
        dirs: list[str] = []
        files: list[ObjectInfo] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        try:
            for page in pages:
                dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                files += [ObjectInfo(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        except (ClientError, BotoCoreError, OSError) as err:
            raise RegionUnavailable(f"region {self.name}: listing {prefix!r} failed: {err}") from err
        return dirs, files

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)


def stores(cfg, **kwargs) -> dict[str, RegionStore]:
    """A RegionStore per region, keyed by name, in write order (primary first)."""
    return {r.name: RegionStore(r, **kwargs) for r in cfg.write_order()}
