"""Replicate objects across every region's store: the write fan-out, the ledger and the reconcile
loop that pays it (Litestream's design: small store clients, one ledger, one loop).

Every write of a key gets a generation (plugins/outbox.py), carried in each copy's metadata and
recorded in the ledger once acknowledged; a delete is a write too (a tombstone). In ``sync`` mode
the uploads to all healthy regions run in parallel from one read of the file, and the call
returns once each of them holds the object; in ``async`` mode it returns once the first region
holds it and the ledger owes the rest. A region that is down, or fails, is owed the write; it is
never skipped silently. Reads (plugins/reads.py) verify a copy against the newest acknowledged
write, never against whatever metadata a region holds.
"""

from __future__ import annotations

import atexit
import json
import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from xregion.config import XRegionConfig
from xregion.home import ledger_path
from xregion.store import ObjectInfo, Payload, Store, StoreError, stores

from . import outbox as ledger
from . import reads, reconcile
from .outbox import KeyState, Outbox, Owed
from .reads import CorruptCopy, NoRegionAvailable  # noqa: F401  (re-exported: their home was here)

log = logging.getLogger(__name__)

LAG = Histogram(
    "xregion_replication_lag_seconds",
    "First region ack to last region ack, per object",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
PENDING_OBJECTS = Gauge("xregion_replication_pending_objects", "Objects owed to a region", ["region"])
PENDING_BYTES = Gauge("xregion_replication_pending_bytes", "Bytes owed to a region", ["region"])
FAILURES = Counter("xregion_replication_failures_total", "Failed region operations", ["region", "op"])
EXIT_DRAIN_SECONDS = float(os.environ.get("XREGION_EXIT_DRAIN_SECONDS", 30))


@dataclass(frozen=True)
class Drained:
    """What ``wait_drained`` saw: whether nothing was left owed, and what was."""

    drained: bool
    remaining: int
    seconds: float


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

    def reset(self) -> None:
        with self._lock:
            self._down_until.clear()


def extra_upload_args() -> dict:
    """``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` (JSON: SSE, ACL, ...), as MLflow's S3 repository honours it."""
    raw = os.environ.get("MLFLOW_S3_UPLOAD_EXTRA_ARGS")
    if not raw:
        return {}
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS is not valid JSON ({err}): {raw[:200]!r}") from None
    if not isinstance(args, dict):
        raise ValueError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS must be a JSON object, got {raw[:200]!r}")
    return args


def guessed_type_args(name: str) -> dict:
    """Content-Type and Content-Encoding from the file name, as MLflow's S3 repository sets them."""
    ctype, encoding = mimetypes.guess_type(name)
    return ({"ContentType": ctype} if ctype else {}) | ({"ContentEncoding": encoding} if encoding else {})


class Replicator:
    def __init__(
        self,
        cfg: XRegionConfig,
        outbox_path: Path | None = None,
        mode: str | None = None,
        region_stores: dict[str, Store] | None = None,
    ):
        self.cfg = cfg
        self.mode = mode or os.environ.get("XREGION_ARTIFACT_MODE") or cfg.artifacts.mode
        self.stores: dict[str, Store] = region_stores or stores(cfg)
        self.health = RegionHealth()
        self.outbox = Outbox(outbox_path or ledger_path(cfg))
        self.pool = ThreadPoolExecutor(max_workers=4 * len(self.stores), thread_name_prefix="xregion-put")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held: dict[int, Owed] = {}  # leases this process holds, renewed by the heartbeat
        self._writes: set[tuple[str, int]] = set()  # writes in progress, renewed likewise
        self.on_repair: Callable[[str, str], None] | None = None
        self.lag_samples: list[float] = []  # per-object lags of this process, for benchmarks

    def _lag(self, seconds: float) -> None:
        LAG.observe(seconds)
        if len(self.lag_samples) < 100_000:
            self.lag_samples.append(seconds)

    def reset_health(self) -> None:
        """Forget what the circuit breakers learnt: the next operation tries every region."""
        self.health.reset()

    def extra_upload_args(self) -> dict:
        return extra_upload_args()

    # --- writes ----------------------------------------------------------------------------
    def put_file(self, key: str, path: str | os.PathLike, extra: dict | None = None) -> ObjectInfo:
        """Write ``path`` as ``key``: a new generation, acknowledged per ``mode``."""
        extra = (guessed_type_args(str(path)) if extra is None else extra) | extra_upload_args()
        payload = Payload.read(path)  # read once: the hash and every region's body come from it
        gen = self._begin(key)
        state = None
        try:
            order = list(self.stores)
            healthy = [r for r in order if self.health.up(r)]
            if self.mode == "sync":
                acked = self._put_parallel(key, payload, gen, extra, healthy)
            else:
                acked = self._put_first(key, payload, gen, extra, healthy)
            if not acked:  # every region the breaker skipped gets one real attempt before we give up
                acked = self._put_first(key, payload, gen, extra, [r for r in order if r not in healthy])
            if not acked:
                raise NoRegionAvailable(f"no region accepted {key}: {', '.join(map(repr, self.stores.values()))}")
            state = KeyState(key, gen, "put", payload.sha256, payload.size)
            owe = [(r, "replicate" if r in healthy else "region-down") for r in order if r not in acked]
            self._end(key, gen, state, owe=owe, source=acked[0])
        finally:
            if state is None:
                self._end(key, gen, None)
        if len(acked) == len(order):
            self._lag(0.0)
        else:
            self.kick()
        return ObjectInfo(key, payload.size, payload.sha256, gen=gen)

    def _begin(self, key: str, tree: bool = False) -> int:
        gen = self.outbox.begin_write(key, tree=tree)
        with self._lock:
            self._writes.add((key, gen))
        self._ensure_heartbeat()
        return gen

    def _end(self, key: str, gen: int, state: KeyState | None, tree: bool = False, **kw) -> None:
        try:
            self.outbox.end_write(key, gen, state, tree=tree, regions=list(self.stores), **kw)
        finally:
            with self._lock:
                self._writes.discard((key, gen))

    def _put_one(self, region: str, key: str, payload: Payload, gen: int, extra: dict) -> bool:
        try:
            self.stores[region].put_payload(key, payload, gen=gen, extra=extra)
            self.health.ok(region)
            return True
        except StoreError as err:
            log.warning("put %s to region %s failed: %s", key, region, err)
            FAILURES.labels(region, "put").inc()
            self.health.failed(region)
            return False

    def _put_parallel(self, key, payload, gen, extra, regions) -> list[str]:
        futures = {r: self.pool.submit(self._put_one, r, key, payload, gen, extra) for r in regions}
        return [r for r, f in futures.items() if f.result()]

    def _put_first(self, key, payload, gen, extra, regions) -> list[str]:
        for region in regions:
            if self._put_one(region, key, payload, gen, extra):
                return [region]
        return []

    def delete_tree(self, base: str) -> None:
        """Delete ``base`` and everything under ``base/``: a tombstone in the ledger first (so no
        copy in flight can bring a key back), then every region, each listed whatever its breaker
        says; a region that cannot be listed or fails is owed the delete of the whole tree."""
        gen = self._begin(base, tree=True)
        try:
            keys, unlisted = reads.tree_keys(self, base)
            self.outbox.tombstone(sorted(keys), gen)  # per key: reads and listings of each see the delete
            self.outbox.end_write(base, gen, KeyState(base, gen, "delete"), tree=True)
        finally:
            with self._lock:
                self._writes.discard((base, gen))
        futures = {r: self.pool.submit(self._delete_in, r, keys) for r in self.stores if r not in unlisted}
        failed = set(unlisted) | {r for r, f in futures.items() if not f.result()}
        for region in failed:
            self.outbox.owe("delete", base, region, reason="region-down", gen=gen, tree=True)
            for key in keys:
                self.outbox.owe("delete", key, region, reason="region-down", gen=gen)
        # a put of a key racing this delete may be newer than the tombstone: converge it everywhere
        raced = [k for k in keys if (s := self.outbox.newest(k)) is not None and not s.deleted]
        for key in raced:
            for region in self.stores:
                self.outbox.owe("put", key, region, reason="concurrent-write", gen=gen)
        if failed or raced:
            self.kick()

    def _delete_in(self, region: str, keys: list[str]) -> bool:
        try:
            self.stores[region].delete_many(sorted(keys))
            return True
        except StoreError as err:
            log.warning("delete under %s in region %s failed: %s", keys[:1], region, err)
            FAILURES.labels(region, "delete").inc()
            self.health.failed(region)
            return False

    # --- reads -----------------------------------------------------------------------------
    def get_file(self, key: str, local_path: str) -> str:
        """Download the newest acknowledged write of ``key``, local region first. Returns the region."""
        return reads.get_file(self, key, local_path)

    def list_dir(self, prefix: str) -> tuple[set[str], dict[str, int]]:
        return reads.list_dir(self, prefix)

    def owe_repair(self, key: str, region: str, gen: int = 0, reason: str = "repair") -> None:
        self.outbox.owe("put", key, region, reason=reason, gen=gen)
        if self.on_repair:
            self.on_repair(key, region)
        self.kick()

    # --- the reconcile loop ------------------------------------------------------------------
    def kick(self) -> None:
        """Make sure a background worker pays what is owed."""
        self._wake.set()
        self.start()

    def start(self) -> None:
        """Start the background worker that pays the ledger (idempotent)."""
        with self._lock:
            if self._stop.is_set() or (self._worker is not None and self._worker.is_alive()):
                return
            self._worker = threading.Thread(target=self._run, name="xregion-replicator", daemon=True)
            self._worker.start()
        self._ensure_heartbeat()

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(target=self._renew_loop, name="xregion-lease", daemon=True)
                self._heartbeat.start()

    def _renew_loop(self) -> None:
        # a lease or a write mark held past its time lets another worker in: renew well before
        while not self._stop.wait(ledger.LEASE_SECONDS / 4):
            with self._lock:
                held, writes = list(self._held.values()), list(self._writes)
            try:
                self.outbox.renew(held)
                for key, gen in writes:
                    self.outbox.renew_write(key, gen)
            except Exception:  # the ledger is busy or gone: the next round tries again
                log.exception("renewing leases in %s failed", self.outbox.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                paid = self.drain_once()
            except Exception:
                log.exception("replication round failed; retrying")
                paid = 0
            if not paid:
                self._wake.wait(timeout=0.25)  # other processes owe work too: look again soon
                self._wake.clear()

    def drain_once(self, limit: int = 16) -> int:
        """Converge up to ``limit`` owed (key, region) pairs; returns how many converged."""
        skip = frozenset(r for r in self.stores if not self.health.up(r))
        items = self.outbox.lease(limit=limit, skip_regions=skip)
        self._update_gauges()
        if not items:
            return 0
        with self._lock:
            self._held.update({i.id: i for i in items})
        self._ensure_heartbeat()
        try:
            results = list(self.pool.map(self._apply, items))
        finally:
            with self._lock:
                for i in items:
                    self._held.pop(i.id, None)
        self._update_gauges()
        return sum(results)

    def _apply(self, item: Owed) -> bool:
        if item.region not in self.stores:  # a region removed from the regions file
            self.outbox.done(item)
            return True
        try:
            outcome = reconcile.converge(self, item)
        except StoreError as err:
            FAILURES.labels(item.region, item.op).inc()
            if not isinstance(err, reconcile.NoGoodCopy):
                self.health.failed(item.region)
            self.outbox.failed(item, str(err), retry_in=min(30.0, 0.5 * 2**item.attempts))
            return False
        if outcome is reconcile.Outcome.WAIT:
            self.outbox.failed(item, "waiting for a write of the key in progress", retry_in=0.2, count=False)
            return False
        self.health.ok(item.region)
        if self.outbox.done(item):
            self._lag(max(0.0, time.time() - item.created))
        return True

    def _update_gauges(self) -> None:
        pending = self.outbox.pending()
        for region in self.stores:
            p = pending.get(region, {"objects": 0, "bytes": 0})
            PENDING_OBJECTS.labels(region).set(p["objects"])
            PENDING_BYTES.labels(region).set(p["bytes"])

    def wait_drained(self, timeout: float = 60.0, owner: str | None = None) -> Drained:
        """Pay the ledger in this thread until nothing is owed (only what ``owner`` owed, if
        given) or ``timeout`` passes. The chaos campaign's "wait until replicated"."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.outbox.count(owner) == 0:
                return Drained(True, 0, time.monotonic() - t0)
            if not self.drain_once():
                time.sleep(0.05)
        left = self.outbox.count(owner)
        return Drained(left == 0, left, time.monotonic() - t0)

    def wait_replicated(self, timeout: float = 60.0) -> bool:
        return self.wait_drained(timeout).drained

    def drain_at_exit(self, timeout: float = EXIT_DRAIN_SECONDS) -> Drained:
        """Before the process goes: pay what it owed, for at most ``timeout`` seconds, and say
        what is left (it stays in the shared ledger for a replicator to pay)."""
        if not self.outbox.count(self.outbox.owner):
            return Drained(True, 0, 0.0)
        self.reset_health()
        result = self.wait_drained(timeout, owner=self.outbox.owner)
        if not result.drained:
            log.warning(
                "exiting with %d replication operation(s) still owed in the ledger %s; a replicator "
                "(`xregion replicate run` with XREGION_LEDGER=%s) pays them",
                result.remaining,
                self.outbox.path,
                self.outbox.path,
            )
        return result

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker and the lease heartbeat, and wait for them."""
        self._stop.set()
        self._wake.set()
        for t in (self._worker, self._heartbeat):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)

    def close(self) -> None:
        """Stop the threads and the upload pool of this replicator."""
        self.stop()
        self.pool.shutdown(wait=True)


_replicators: dict[tuple, Replicator] = {}
_lock = threading.Lock()


def _at_exit(fn) -> None:
    # threading's own exit hooks run before concurrent.futures refuses new work and before
    # daemon threads stop; atexit runs too late for the upload pool, so prefer the former
    register = getattr(threading, "_register_atexit", None)
    try:
        (register or atexit.register)(fn)
    except RuntimeError:
        atexit.register(fn)


def shared_replicator(cfg: XRegionConfig) -> Replicator:
    """One replicator per process, regions file and ledger (MLflow builds a repository per
    request). It pays what a previous, perhaps killed, process left owed, and before this
    process exits it pays (for a bounded time) what this process owed."""
    key = (cfg.source, str(ledger_path(cfg)), os.environ.get("XREGION_ARTIFACT_MODE"))
    with _lock:
        rep = _replicators.get(key)
        if rep is None:
            rep = _replicators[key] = Replicator(cfg)
            _at_exit(rep.drain_at_exit)
            if rep.outbox.count():
                rep.kick()
        return rep
