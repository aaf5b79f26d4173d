"""A file read for every region it goes to: its hash, and the S3 checksum of each request body.

A file up to the multipart threshold (``XREGION_MULTIPART_THRESHOLD_MIB``, 64: the memory one
upload may hold, about what s3transfer keeps in flight with its 10 x 8 MiB parts) goes in one
request: it is read once into memory, hashed as read, and that one buffer goes to every region;
its SHA-256 is at once the recorded hash, the S3 checksum and the signed payload hash, so every
byte is hashed once. A larger file is sent in 8 MiB parts: the whole-file SHA-256 must be in the
metadata of CreateMultipartUpload, before any part, so it is hashed in one pass first (the whole
file in the calling thread, each part's digest in a worker beside it), then each part is read once
more as it is sent and that one buffer goes to every region (``xregion/fanout.py``). MD5 is
computed only when the store needs Content-MD5 instead of a SHA-256 checksum
(``XREGION_S3_CHECKSUM=md5``).

A multipart payload keeps the file open, so it can still be read after the caller removed the file
(an MLflow server's upload lives in a temporary directory): ``close()`` it when done.
``verified_part`` hashes a part again as it is read and refuses one that no longer matches the
digest taken at write time (for bytes sent long after the write, when the file may have changed).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from xregion.errors import XRegionError

from .objects import PART
from .workers import shared_pool

HASH_AHEAD = 4  # part digests in flight during the hashing pass (memory: HASH_AHEAD parts)


def multipart_threshold() -> int:
    """Bytes up to which a file goes in one request (and is held in memory while it is sent)."""
    return max(PART, int(float(os.environ.get("XREGION_MULTIPART_THRESHOLD_MIB", 64)) * 2**20))


class SourceChanged(XRegionError, ValueError):
    """The file's bytes are no longer those hashed when it was written."""


def md5_mode() -> bool:
    """Content-MD5 instead of an S3 SHA-256 checksum (for stores without flexible checksums)."""
    return os.environ.get("XREGION_S3_CHECKSUM", "sha256").lower() == "md5"


def _digests(part: bytes, md5: bool) -> tuple[bytes, bytes | None]:
    return hashlib.sha256(part).digest(), hashlib.md5(part, usedforsecurity=False).digest() if md5 else None


def _read_all(fd: int, size: int) -> bytes:
    chunks, got = [], 0
    while got <= size:  # one more read than the size says: a file that grew is read whole
        block = os.read(fd, max(size - got, 0) + 1)
        if not block:
            break
        chunks.append(block)
        got += len(block)
    return b"".join(chunks)


@dataclass(frozen=True)
class Payload:
    path: str
    size: int
    sha256: str
    data: bytes | None  # the whole body when it fits in one request
    part_digests: tuple[bytes, ...]  # raw SHA-256 of each part (single part: the body's)
    part_md5s: tuple[bytes, ...] = ()  # only in md5 mode
    fd: int | None = None  # the open file of a multipart payload

    @classmethod
    def read(cls, path: str | os.PathLike, md5: bool | None = None) -> Payload:
        md5 = md5_mode() if md5 is None else md5
        path = str(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            size, limit = os.fstat(fd).st_size, multipart_threshold()
            if size <= limit:
                data = _read_all(fd, size)
                if len(data) <= limit:
                    os.close(fd)
                    return cls.of_bytes(data, md5, path)
            return cls._hashed(path, fd, md5)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _hashed(cls, path: str, fd: int, md5: bool) -> Payload:
        whole, pool = hashlib.sha256(), shared_pool()
        futures, size = [], 0
        while part := os.pread(fd, PART, size):
            whole.update(part)  # in this thread, while a worker takes the part's own digest
            futures.append(pool.submit(_digests, part, md5))
            size += len(part)
            if len(futures) >= HASH_AHEAD:
                futures[-HASH_AHEAD].result()
        sums = [f.result() for f in futures]
        md5s = tuple(m for _, m in sums) if md5 else ()
        return cls(path, size, whole.hexdigest(), None, tuple(d for d, _ in sums), md5s, fd)

    @classmethod
    def of_bytes(cls, data: bytes, md5: bool | None = None, path: str = "") -> Payload:
        md5 = md5_mode() if md5 is None else md5
        digest, md5sum = _digests(data, md5)
        return cls(path, len(data), digest.hex(), data, (digest,), (md5sum,) if md5 else ())

    @property
    def parts(self) -> int:
        return len(self.part_digests)

    def part(self, n: int) -> bytes:
        if self.data is not None:
            return self.data
        if self.fd is not None:
            return os.pread(self.fd, PART, n * PART)
        with open(self.path, "rb") as f:
            f.seek(n * PART)
            return f.read(PART)

    def verified_part(self, n: int) -> bytes:
        """Part ``n``, hashed as read and refused unless it is the bytes hashed at write time (a
        body held in memory is those very bytes: immutable, hashed when it was read)."""
        if self.data is not None:
            return self.data
        body = self.part(n)
        if hashlib.sha256(body).digest() != self.part_digests[n]:
            raise SourceChanged(f"{self.path or 'payload'}: part {n + 1} changed since it was hashed")
        return body

    def checksum(self, n: int) -> dict:
        """The S3-verified checksum of part ``n``: SHA-256, or Content-MD5 in md5 mode."""
        if self.part_md5s:
            return {"ContentMD5": base64.b64encode(self.part_md5s[n]).decode()}
        return {"ChecksumSHA256": base64.b64encode(self.part_digests[n]).decode()}

    def close(self) -> None:
        """Close the file (idempotent: a descriptor number is never closed twice)."""
        fd = self.fd
        if fd is not None:
            object.__setattr__(self, "fd", None)
            os.close(fd)

    def __enter__(self) -> Payload:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
