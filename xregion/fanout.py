"""One upload to several regions: each part read once, sent to every region, parts in parallel.

A file that fits in one request is one PUT per region, from one buffer. A larger one is a multipart
upload per region: the parts are read one after another (a part is read once, whatever the number
of regions) and up to ``PART_CONCURRENCY`` parts are in flight at once, each to every region in
parallel, like boto3's TransferConfig (max_concurrency 10); memory is bounded by the parts in
flight. A region that fails is dropped from the rest of the upload (its upload aborted) and
reported; the others go on. Every request body carries its S3 checksum (``Payload.checksum``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .objects import GEN_META, HASH_META, ObjectInfo, StoreError
from .payload import Payload
from .workers import shared_pool

PART_CONCURRENCY = 10


@dataclass(frozen=True)
class Target:
    """A region's store to write, and the copy the write is conditional on (an ETag, or none)."""

    store: Any  # a RegionStore
    if_match: str | None = None
    if_none_match: bool = False

    @property
    def condition(self) -> dict:
        if self.if_match:
            return {"IfMatch": f'"{self.if_match}"'}
        return {"IfNoneMatch": "*"} if self.if_none_match else {}


def upload_args(payload: Payload, gen: int | None, extra: dict | None) -> dict:
    """Headers of every copy: the caller's (type, encoding, SSE...) and the hash and generation."""
    meta = {HASH_META: payload.sha256} | ({GEN_META: str(gen)} if gen is not None else {})
    return {**(extra or {}), "Metadata": {**(extra or {}).get("Metadata", {}), **meta}}


def each(targets: dict[str, Any], fn: Callable[[str, Any], Any]) -> dict[str, Any]:
    """``fn`` for every target in parallel (inline for one); a StoreError is that target's result."""

    def call(name: str, target: Target):
        try:
            return fn(name, target)
        except StoreError as err:
            return err

    if len(targets) == 1:
        return {name: call(name, t) for name, t in targets.items()}
    futures = {name: shared_pool().submit(call, name, t) for name, t in targets.items()}
    return {name: f.result() for name, f in futures.items()}


def put_all(
    targets: dict[str, Target],
    key: str,
    payload: Payload,
    *,
    gen: int | None = None,
    extra: dict | None = None,
    verify: bool = False,
    concurrency: int = PART_CONCURRENCY,
) -> dict[str, ObjectInfo | StoreError]:
    """Write ``payload`` as ``key`` to every target. Per region: the copy written, or why not.

    ``verify`` hashes each part again as it is read and raises ``SourceChanged`` (nothing
    completed anywhere) when the file is no longer the one hashed."""
    args = upload_args(payload, gen, extra)
    if payload.parts == 1:
        body = payload.verified_part(0) if verify else payload.part(0)
        check = payload.checksum(0)
        heads = each(targets, lambda _, t: t.store.put_object_body(key, body, args, t.condition, check))
    else:
        heads = _Multipart(targets, key, payload, args, verify, concurrency).run()
    return {
        name: head
        if isinstance(head, StoreError)
        else ObjectInfo(
            key,
            payload.size,
            payload.sha256,
            head.get("ETag", "").strip('"') or None,
            gen,
            None,
            args.get("ContentType"),
        )
        for name, head in heads.items()
    }


class _Multipart:
    def __init__(self, targets, key, payload: Payload, args, verify, concurrency):
        self.targets, self.key, self.payload, self.args = targets, key, payload, args
        self.verify, self.concurrency = verify, concurrency
        self.uploads: dict[str, str] = {}
        self.parts: dict[str, list] = {name: [None] * payload.parts for name in targets}
        self.failed: dict[str, StoreError] = {}
        self.lock = threading.Lock()

    def live(self) -> list[str]:
        with self.lock:
            return [n for n in self.uploads if n not in self.failed]

    def run(self) -> dict[str, dict | StoreError]:
        sha = not self.payload.part_md5s
        for name, got in each(self.targets, lambda _, t: t.store.create_upload(self.key, self.args, sha)).items():
            if isinstance(got, StoreError):
                self.failed[name] = got
            else:
                self.uploads[name] = got
        try:
            self._send_parts()
            live = {n: self.targets[n] for n in self.live()}
            done = each(
                live, lambda n, t: t.store.complete_upload(self.key, self.uploads[n], self.parts[n], t.condition)
            )
        except BaseException:
            self._abort(list(self.uploads))
            raise
        self.failed.update({n: r for n, r in done.items() if isinstance(r, StoreError)})
        self._abort([n for n in self.uploads if n in self.failed])
        return {n: self.failed.get(n) or done[n] for n in self.targets}

    def _send_parts(self) -> None:
        slots = threading.Semaphore(self.concurrency)
        futures = []
        try:
            for n in range(self.payload.parts):
                slots.acquire()  # at most ``concurrency`` parts in memory and on the wire
                live = self.live()
                if not live:
                    slots.release()
                    break
                body = self.payload.verified_part(n) if self.verify else self.payload.part(n)
                release = _countdown(len(live), slots.release)
                for name in live:
                    future = shared_pool().submit(self._part, name, n, body)
                    future.add_done_callback(release)
                    futures.append(future)
        finally:
            for f in futures:
                f.result()

    def _part(self, name: str, n: int, body: bytes) -> None:
        if name in self.failed:
            return
        check = self.payload.checksum(n)
        try:
            etag = self.targets[name].store.upload_part(self.key, self.uploads[name], n + 1, body, check)
        except StoreError as err:
            with self.lock:
                self.failed.setdefault(name, err)
            return
        self.parts[name][n] = {
            "PartNumber": n + 1,
            "ETag": etag,
            **{k: v for k, v in check.items() if k != "ContentMD5"},
        }

    def _abort(self, names: list[str]) -> None:
        for name in names:  # an abandoned upload holds storage until aborted
            self.targets[name].store.abort_upload(self.key, self.uploads[name])


def _countdown(n: int, then: Callable[[], None]) -> Callable:
    """A done-callback that calls ``then`` once ``n`` futures have finished."""
    left = [n]
    lock = threading.Lock()

    def done(_future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    return done
