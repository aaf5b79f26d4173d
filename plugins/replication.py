"""Replicate objects across every region's store: the write fan-out, the owed ledger and the
reconcile loop that pays it (Litestream's design: small store clients and one loop).

Writes go to the primary first. In ``sync`` mode the uploads to all healthy regions run in
parallel and the call returns once each of them holds the object; in ``async`` mode it returns
once the first region holds it and the outbox owes the rest. A region that is down, or fails, is
owed the write; it is never skipped silently. Reads try the local region first and check the
content hash recorded at write, falling back to another region and owing a repair.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from xregion.config import XRegionConfig
from xregion.home import xregion_home
from xregion.store import ObjectInfo, ObjectNotFound, RegionStore, StoreError, sha256_file, stores

from .outbox import Outbox, Owed

log = logging.getLogger(__name__)

LAG = Histogram(
    "xregion_replication_lag_seconds",
    "First region ack to last region ack, per object",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
PENDING_OBJECTS = Gauge("xregion_replication_pending_objects", "Objects owed to a region", ["region"])
PENDING_BYTES = Gauge("xregion_replication_pending_bytes", "Bytes owed to a region", ["region"])
FAILURES = Counter("xregion_replication_failures_total", "Failed region operations", ["region", "op"])


class NoRegionAvailable(StoreError):
    pass


class CorruptCopy(StoreError):
    pass


class RegionHealth:
    """A circuit breaker per region: after a failure, skip the region for ``cooldown`` seconds so
    that writes record it as owed at once instead of waiting on its timeout again."""

    def __init__(self, cooldown: float = 5.0):
        self.cooldown = cooldown
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def up(self, region: str) -> bool:
        return self._down_until.get(region, 0) <= time.monotonic()

    def failed(self, region: str) -> None:
        with self._lock:
            self._down_until[region] = time.monotonic() + self.cooldown

    def ok(self, region: str) -> None:
        self._down_until.pop(region, None)


class Replicator:
    def __init__(self, cfg: XRegionConfig, outbox_path: Path | None = None, mode: str | None = None):
        self.cfg = cfg
        self.mode = mode or os.environ.get("XREGION_ARTIFACT_MODE") or cfg.artifacts.mode
        self.stores: dict[str, RegionStore] = stores(cfg)
        self.health = RegionHealth()
        self.outbox = Outbox(outbox_path or xregion_home() / "outbox.sqlite")
        self.pool = ThreadPoolExecutor(max_workers=4 * len(self.stores), thread_name_prefix="xregion-put")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.on_repair: Callable[[str, str], None] | None = None
        self.lag_samples: list[float] = []  # per-object lags of this process, for benchmarks

    def _lag(self, seconds: float) -> None:
        LAG.observe(seconds)
        if len(self.lag_samples) < 100_000:
            self.lag_samples.append(seconds)

    # --- writes ----------------------------------------------------------------------------
    def put_file(self, key: str, path: str | os.PathLike) -> ObjectInfo:
        digest = sha256_file(path)
        size = os.path.getsize(path)
        order = list(self.stores)
        healthy = [r for r in order if self.health.up(r)]
        if self.mode == "sync":
            acked = self._put_parallel(key, path, digest, healthy)
        else:
            acked = self._put_first(key, path, digest, healthy)
        if not acked:
            # every region the breaker skipped gets one real attempt before we give up
            acked = self._put_first(key, path, digest, [r for r in order if r not in healthy])
        if not acked:
            raise NoRegionAvailable(
                f"no region accepted {key}: "
                + ", ".join(f"{r} ({self.stores[r].region.s3.endpoint_url})" for r in order)
            )
        now = time.time()
        for region in order:
            if region not in acked:
                self.outbox.owe(
                    "put",
                    key,
                    region,
                    source=acked[0],
                    sha256=digest,
                    size=size,
                    created=now,
                    reason="replicate" if region in healthy else "region-down",
                )
        if len(acked) == len(order):
            self._lag(0.0)
        else:
            self.kick()
        return ObjectInfo(key, size, digest)

    def _put_one(self, region: str, key: str, path, digest: str) -> bool:
        try:
            self.stores[region].put_file(key, path, sha256=digest)
            self.health.ok(region)
            return True
        except StoreError as err:
            log.warning("put %s to region %s failed: %s", key, region, err)
            FAILURES.labels(region, "put").inc()
            self.health.failed(region)
            return False

    def _put_parallel(self, key, path, digest, regions) -> list[str]:
        futures = {r: self.pool.submit(self._put_one, r, key, path, digest) for r in regions}
        return [r for r, f in futures.items() if f.result()]

    def _put_first(self, key, path, digest, regions) -> list[str]:
        for region in regions:
            if self._put_one(region, key, path, digest):
                return [region]
        return []

    def delete_tree(self, base: str) -> None:
        """Delete the object ``base`` and everything under ``base/`` in every region; a region
        that is down is owed the deletes."""
        keys: set[str] = set()
        for region, store in self.stores.items():
            if not self.health.up(region):
                continue
            try:
                keys |= {o.key for o in store.list(base) if not base or o.key == base or o.key.startswith(base + "/")}
            except StoreError:
                self.health.failed(region)
        for region, store in self.stores.items():
            for key in sorted(keys):
                try:
                    if not self.health.up(region):
                        raise StoreError("region marked down")
                    store.delete(key)
                except StoreError:
                    FAILURES.labels(region, "delete").inc()
                    self.health.failed(region)
                    self.outbox.owe("delete", key, region, reason="region-down")
        self.kick()

    # --- reads -----------------------------------------------------------------------------
    def _expected_hash(self, key: str, info: ObjectInfo) -> str | None:
        if info.sha256:
            return info.sha256
        for store in self.stores.values():
            try:
                other = store.stat(key)
            except StoreError:
                continue
            if other and other.sha256:
                return other.sha256
        return None

    def get_file(self, key: str, local_path: str) -> str:
        """Download from the first region holding a good copy, local region first. Returns the region."""
        problems = []
        for region in self.cfg.read_order():
            name = region.name
            if not self.health.up(name) and len(problems) < len(self.stores) - 1:
                problems.append(f"{name}: marked down")
                continue
            store = self.stores[name]
            try:
                info = store.stat(key)
                if info is None:
                    problems.append(f"{name}: missing")
                    self._owe_repair(key, name)
                    continue
                got = store.get_file(key, local_path)
                expected = self._expected_hash(key, info)
                if expected and got.sha256 != expected:
                    problems.append(f"{name}: content hash {got.sha256[:12]} != recorded {expected[:12]}")
                    log.error("corrupt copy of %s in region %s; reading another region", key, name)
                    self._owe_repair(key, name)
                    continue
                self.health.ok(name)
                return name
            except ObjectNotFound:
                problems.append(f"{name}: missing")
            except StoreError as err:
                problems.append(f"{name}: {err}")
                self.health.failed(name)
        raise ObjectNotFound(f"no good copy of {key} in any region ({'; '.join(problems)})")

    def _owe_repair(self, key: str, region: str) -> None:
        good = next((r for r in self.stores if r != region), None)
        self.outbox.owe("put", key, region, source=good, reason="repair")
        if self.on_repair:
            self.on_repair(key, region)
        self.kick()

    def list_dir(self, prefix: str) -> tuple[set[str], dict[str, int]]:
        """The union of every reachable region's listing (a lagging region hides nothing)."""
        dirs: set[str] = set()
        files: dict[str, int] = {}
        answered = 0
        futures = {r: self.pool.submit(s.list_dir, prefix) for r, s in self.stores.items() if self.health.up(r)}
        for region, fut in futures.items():
            try:
                d, f = fut.result()
            except StoreError:
                self.health.failed(region)
                continue
            answered += 1
            dirs |= set(d)
            for o in f:
                files.setdefault(o.key, o.size)
        if not answered:
            raise NoRegionAvailable(f"no region could list {prefix!r}")
        return dirs, files

    # --- the reconcile loop ------------------------------------------------------------------
    def kick(self) -> None:
        """Make sure a background worker pays what is owed."""
        self._wake.set()
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="xregion-replicator", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            paid = self.drain_once()
            if not paid:
                self._wake.wait(timeout=1.0)
                self._wake.clear()

    def drain_once(self, limit: int = 16) -> int:
        """Apply up to ``limit`` owed operations; returns how many were applied."""
        skip = frozenset(r for r in self.stores if not self.health.up(r))
        items = self.outbox.lease(limit=limit, skip_regions=skip)
        self._update_gauges()
        if not items:
            return 0
        results = list(self.pool.map(self._apply, items))
        self._update_gauges()
        return sum(results)

    def _apply(self, item: Owed) -> bool:
        target = self.stores.get(item.region)
        if target is None:  # a region removed from the regions file
            self.outbox.done(item)
            return True
        try:
            if item.op == "delete":
                target.delete(item.key)
            else:
                self._copy(item, target)
        except ObjectNotFound:
            self.outbox.done(item)  # deleted since it was owed: nothing to copy
            return True
        except StoreError as err:
            FAILURES.labels(item.region, item.op).inc()
            self.health.failed(item.region)
            self.outbox.failed(item, str(err), retry_in=min(30.0, 0.5 * 2**item.attempts))
            return False
        self.health.ok(item.region)
        self.outbox.done(item)
        self._lag(max(0.0, time.time() - item.created))
        return True

    def _copy(self, item: Owed, target: RegionStore) -> None:
        """Copy a good copy into ``target`` (streamed through a temp file: bounded memory)."""
        sources = [item.source] + [r for r in self.stores if r not in (item.source, item.region)]
        last: Exception | None = None
        with tempfile.TemporaryDirectory(prefix="xregion-copy-") as tmp:
            local = Path(tmp) / "object"
            for source in filter(None, sources):
                store = self.stores.get(source)
                if store is None:
                    continue
                try:
                    info = store.stat(item.key)
                    if info is None:
                        continue
                    got = store.get_file(item.key, local)
                    expected = item.sha256 or info.sha256
                    if expected and got.sha256 != expected:
                        raise CorruptCopy(f"{source} holds a corrupt copy of {item.key}")
                    target.put_file(item.key, local, sha256=got.sha256 if not expected else expected)
                    return
                except StoreError as err:
                    last = err
            if last:
                raise last
            raise ObjectNotFound(f"{item.key} is in no region any more")

    def _update_gauges(self) -> None:
        pending = self.outbox.pending()
        for region in self.stores:
            p = pending.get(region, {"objects": 0, "bytes": 0})
            PENDING_OBJECTS.labels(region).set(p["objects"])
            PENDING_BYTES.labels(region).set(p["bytes"])

    def wait_replicated(self, timeout: float = 60.0) -> bool:
        """Drain in this thread until nothing is owed (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.count() == 0:
                return True
            if not self.drain_once():
                time.sleep(0.05)
        return self.outbox.count() == 0

    def close(self) -> None:
        self._stop.set()
        self._wake.set()


_replicators: dict[tuple, Replicator] = {}
_lock = threading.Lock()


def shared_replicator(cfg: XRegionConfig) -> Replicator:
    """One replicator per process and regions file: MLflow builds a repository per request."""
    key = (cfg.source, str(xregion_home()), os.environ.get("XREGION_ARTIFACT_MODE"))
    with _lock:
        rep = _replicators.get(key)
        if rep is None:
            rep = _replicators[key] = Replicator(cfg)
            if rep.outbox.count():
                rep.kick()  # pay what a previous (perhaps killed) process left owed
        return rep
