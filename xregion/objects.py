"""What a region's object store deals in: object descriptions, the errors, and the ``Store`` protocol.

Split from ``xregion/store.py`` (the S3 client) so that the types can be imported without boto3's
weight; ``xregion.store`` re-exports every name here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from xregion.errors import XRegionError

HASH_META = "sha256"  # user metadata key (x-amz-meta-sha256) holding the content hash recorded at write
RESERVED = "_xregion"  # xregion's own objects in every bucket; never written through the artifact API
GEN_META = "xregion-gen"  # user metadata key holding the generation of the write (plugins/ARTIFACTS.md)
CHUNK = 1024 * 1024
PART = 8 * CHUNK  # the part size of a multipart upload (boto3's default); the threshold is payload.py's


class StoreError(XRegionError):
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
    # how the store encrypts this copy (SSE-S3 "AES256" or "aws:kms" with its key), as S3's own
    # replication keeps it: a copy made by any replicator is encrypted as its source was
    encryption: tuple[str, str | None] | None = None

    @property
    def upload_args(self) -> dict:
        """The headers a copy of this object must carry again."""
        args = {"ContentType": self.content_type} if self.content_type else {}
        args |= {"ContentEncoding": self.content_encoding} if self.content_encoding else {}
        if self.encryption:
            sse, kms_key = self.encryption
            args |= {"ServerSideEncryption": sse} | ({"SSEKMSKeyId": kms_key} if kms_key else {})
        return args


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
