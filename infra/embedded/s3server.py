"""The embedded S3 endpoint: moto's S3 server, with its objects kept on disk as MinIO keeps them.

moto holds buckets and objects in memory only, so a restart (``xregion down`` + ``up``, a kill -9)
would lose every artifact of the region. This process runs moto's own WSGI application and wraps
it: once a request that changes an object has succeeded in moto, and before the client sees the
response, the object's state as moto now holds it (bytes, user metadata, content type, ETag,
checksums, tags, storage class, encryption and lock fields) is written to
``DATA/<bucket>/objects/`` and fsynced, file and directory; a delete removes the file. At start
every bucket and object is loaded back into moto. So an acknowledged PUT survives a kill -9 of
the store. Clients still speak plain S3 to it (boto3, exactly as to MinIO or AWS).

Kept: bucket existence, every object's newest version, completed multipart uploads (the
assembled object and its ``-N`` ETag), copies, tagging, deletes (single and batch). Not kept:
multipart uploads still in progress (their parts; the client's upload fails and is retried, as
after any failed upload), bucket configuration (versioning, policies, lifecycle), object ACLs
and older versions of a versioned bucket: the platform uses none of them.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import struct
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("xregion.s3server")

HEADER = struct.Struct(">I")  # length of the JSON description that precedes an object's bytes
CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskStore:
    """The on-disk copy: ``ROOT/<bucket>/bucket.json`` and one file per object,
    ``ROOT/<bucket>/objects/<sha256(key)[:2]>/<sha256(key)>`` = header length, JSON, bytes.

    Each file is written to a temporary name, fsynced and renamed over the old one, then its
    directory is fsynced: a crash leaves the old object or the new one, never a torn one.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / bucket

    def object_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self._bucket_dir(bucket) / "objects" / digest[:2] / digest

    def save_bucket(self, bucket: str, meta: dict) -> None:
        path = self._bucket_dir(bucket) / "bucket.json"
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._replace(path, [json.dumps(meta).encode()])
        _fsync_dir(self.root)

    def drop_bucket(self, bucket: str) -> None:
        if self._bucket_dir(bucket).exists():
            shutil.rmtree(self._bucket_dir(bucket))
            _fsync_dir(self.root)

    def save_object(self, bucket: str, key: str, meta: dict, chunks: Iterable[bytes]) -> None:
        path = self.object_path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        head = json.dumps(meta).encode()
        self._replace(path, [HEADER.pack(len(head)), head], chunks)

    def drop_object(self, bucket: str, key: str) -> None:
        path = self.object_path(bucket, key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    @staticmethod
    def _replace(path: Path, *parts: Iterable[bytes]) -> None:
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    for chunk in part:
                        f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def buckets(self) -> Iterator[tuple[str, dict]]:
        for meta in sorted(self.root.glob("*/bucket.json")):
            yield meta.parent.name, json.loads(meta.read_text())

    def objects(self, bucket: str) -> Iterator[tuple[dict, bytes]]:
        for path in sorted((self._bucket_dir(bucket) / "objects").glob("*/*")):
            if path.name.startswith("."):  # a temporary file a crash left behind: never acknowledged
                path.unlink(missing_ok=True)
                continue
            raw = path.read_bytes()
            (n,) = HEADER.unpack_from(raw)
            yield json.loads(raw[HEADER.size : HEADER.size + n]), raw[HEADER.size + n :]


# --- moto's state <-> the disk copy ------------------------------------------------------------
def _backend_of(bucket: str):
    """(backend, bucket) that moto holds under this name, or (None, None)."""
    from moto.s3.models import s3_backends

    owner = s3_backends.bucket_accounts.get(bucket)
    if owner is None:
        return None, None
    partition, account = owner
    backend = s3_backends[account][partition]
    return backend, backend.buckets.get(bucket)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def describe(backend, fake) -> dict:
    """Everything of a FakeKey that a GET or HEAD answers with, except the bytes."""
    return {
        "key": fake.name,
        "etag": fake.etag.strip('"'),
        "last_modified": fake.last_modified.isoformat(),
        "metadata": dict(fake.metadata),
        "storage_class": fake.storage_class,
        "encryption": fake.encryption,
        "kms_key_id": fake.kms_key_id,
        "bucket_key_enabled": fake.bucket_key_enabled,
        "website_redirect_location": fake.website_redirect_location,
        "checksum_algorithm": fake.checksum_algorithm,
        "checksum_value": _text(fake.checksum_value),
        "checksum_type": fake.checksum_type,
        "checksum_parts": fake.checksum_parts,
        "lock_mode": fake.lock_mode,
        "lock_legal_status": fake.lock_legal_status,
        "lock_until": fake.lock_until,
        "tags": backend.tagger.get_tag_dict_for_resource(fake.arn),
    }


def _chunks(fake) -> Iterator[bytes]:
    """The object's bytes, read under its lock (moto's own reads share the buffer's position)."""
    with fake.lock:
        buf = fake._value_buffer
        buf.seek(0)
        while chunk := buf.read(CHUNK):
            yield chunk


def restore(disk: DiskStore) -> tuple[int, int]:
    """Load every bucket and object of ``disk`` into moto. Returns (buckets, objects)."""
    from moto.s3.models import s3_backends

    nbuckets = nobjects = 0
    for name, meta in disk.buckets():
        backend = s3_backends[meta["account_id"]][meta["partition"]]
        if name not in backend.buckets:
            backend.create_bucket(name, meta["region_name"])
        nbuckets += 1
        for obj, data in disk.objects(name):
            fake = backend.put_object(
                name,
                obj["key"],
                data,
                storage=obj["storage_class"],
                etag=obj["etag"],
                encryption=obj["encryption"],
                kms_key_id=obj["kms_key_id"],
                bucket_key_enabled=obj["bucket_key_enabled"],
                lock_mode=obj["lock_mode"],
                lock_legal_status=obj["lock_legal_status"],
                lock_until=obj["lock_until"],
                checksum_value=obj["checksum_value"],
                disable_notification=True,
            )
            fake.set_metadata(dict(obj["metadata"]))
            fake.last_modified = datetime.datetime.fromisoformat(obj["last_modified"])
            fake.website_redirect_location = obj["website_redirect_location"]
            fake.checksum_algorithm = obj["checksum_algorithm"]
            fake.checksum_type = obj["checksum_type"]
            fake.checksum_parts = obj["checksum_parts"]
            if obj["tags"]:
                backend.put_object_tagging(fake, obj["tags"])
            nobjects += 1
    return nbuckets, nobjects


# --- the WSGI wrapper --------------------------------------------------------------------------
class _Shim:
    """What moto's path-or-virtual-host test reads of a request."""

    def __init__(self, environ: dict):
        self.headers = {"host": environ.get("HTTP_HOST", "")}
        self.url = f"http://{environ.get('HTTP_HOST', '')}{environ.get('PATH_INFO', '')}"


def target(environ: dict) -> tuple[str, str]:
    """(bucket, key) of a request, path-style or virtual-host style, as moto itself decides."""
    from moto.s3.responses import S3Response

    raw = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    path = unquote(urlsplit(raw.encode("latin-1").decode("utf-8", "replace")).path)
    if S3Response.subdomain_based_buckets(_Shim(environ)):
        return environ.get("HTTP_HOST", "").split(".")[0], path.lstrip("/")
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def _deleted_keys(body: bytes) -> list[str]:
    """Keys named in a DeleteObjects request body."""
    keys = []
    for el in ET.fromstring(body).iter():
        if el.tag.rsplit("}", 1)[-1] == "Object":
            for child in el:
                if child.tag.rsplit("}", 1)[-1] == "Key" and child.text:
                    keys.append(child.text)
    return keys


@dataclass
class _Plan:
    keys: list[tuple[str, str]]  # (bucket, key) the request reads or changes: locked for its whole length
    persist: Callable[[], None] | None  # what to write to disk if it succeeds (None: a read)


class PersistentS3:
    """WSGI middleware: answers a successful object write or delete only once it is on disk.

    A request on a key holds that key's lock from the moment moto sees it until its answer is
    ready, reads included: a write becomes visible to GET and HEAD of the key only once it is
    durable, as in MinIO, so nobody (a replicator copying the key) acts on a write that a kill -9
    of the store could still undo. Listings are not locked and may show a write being persisted.
    """

    def __init__(self, app: Callable, disk: DiskStore, stripes: int = 64):
        self.app = app
        self.disk = disk
        self._locks = [threading.Lock() for _ in range(stripes)]

    def plan(self, environ: dict) -> _Plan | None:
        """The keys a request touches and what to persist, or None (listings, unkept changes)."""
        method = environ.get("REQUEST_METHOD", "GET")
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return None
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        bucket, key = target(environ)
        if not bucket:
            return None
        if key:
            if method in ("GET", "HEAD"):
                return _Plan([(bucket, key)], None)
            if "uploadId" in query and method != "POST" or "uploads" in query:
                return None  # a part, an initiation or an abort: no object changes yet
            return _Plan([(bucket, key)], lambda: self.sync_key(bucket, key))
        if method == "POST" and "delete" in query:
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
            keys = _deleted_keys(body)
            return _Plan([(bucket, k) for k in keys], lambda: [self.sync_key(bucket, k) for k in keys])
        if not query and method in ("PUT", "DELETE"):
            return _Plan([], lambda: self.sync_bucket(bucket))
        return None

    def sync_bucket(self, bucket: str) -> None:
        backend, found = _backend_of(bucket)
        if found is None:
            self.disk.drop_bucket(bucket)
        else:
            meta = {"account_id": found.account_id, "partition": found.partition, "region_name": found.region_name}
            self.disk.save_bucket(bucket, meta)

    def sync_key(self, bucket: str, key: str) -> None:
        """Make the disk copy of ``key`` what moto holds now (the caller holds the key's lock)."""
        for _ in range(10):
            backend, found = _backend_of(bucket)
            fake = found.keys.get(key) if found is not None else None
            if fake is None or not hasattr(fake, "_value_buffer"):  # absent, or a delete marker
                self.disk.drop_object(bucket, key)
                return
            try:
                self.disk.save_object(bucket, key, describe(backend, fake), _chunks(fake))
                return
            except ValueError:  # its buffer was closed: a newer write replaced it; save that one
                continue
        raise RuntimeError(f"{bucket}/{key} kept changing while being saved")

    def __call__(self, environ: dict, start_response: Callable):
        plan = self.plan(environ)
        if plan is None:
            return self.app(environ, start_response)
        stripes = sorted({hash(k) % len(self._locks) for k in plan.keys})  # one order: no deadlock
        for i in stripes:
            self._locks[i].acquire()
        try:
            return self._locked(plan, environ, start_response)
        finally:
            for i in reversed(stripes):
                self._locks[i].release()

    def _locked(self, plan: _Plan, environ: dict, start_response: Callable) -> list[bytes]:
        captured: dict = {}
        body: list[bytes] = []

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers)
            return body.append

        result = self.app(environ, capture)
        try:
            body.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        if plan.persist is not None and captured["status"].startswith("2"):
            try:
                plan.persist()
            except Exception:  # never acknowledge a write that is not on disk
                log.exception("persisting %s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
                start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
                return [b"<Error><Code>InternalError</Code><Message>not persisted</Message></Error>"]
        start_response(captured["status"], captured["headers"])
        return body


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--data", required=True, help="directory holding the objects")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    disk = DiskStore(Path(args.data))
    buckets, objects = restore(disk)
    log.info("loaded %d bucket(s), %d object(s) from %s", buckets, objects, disk.root)
    app = PersistentS3(DomainDispatcherApplication(create_backend_app), disk)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
