"""Replicate objects across every region's store: the write fan-out, the ledger and the reconcile
loop that pays it (Litestream's design: small store clients, one ledger, one loop).

Every write of a key gets a generation (plugins/outbox.py), carried in each copy's metadata and
recorded in the ledger once acknowledged; a delete is a write too (a tombstone). In ``sync`` mode
the uploads to all healthy regions run in parallel from one read of the file, and the call
returns once each of them holds the object; in ``async`` mode it returns once the first region
holds it and the ledger owes the rest. A region that is down, or fails, is owed the write; it is
never skipped silently. Reads (plugins/reads.py) verify a copy against the newest acknowledged
write, never against whatever metadata a region holds. The loop that pays the ledger is
plugins/loop.py; the bytes of this process's async writes that pay it without a download,
plugins/seeds.py; the upload to several regions at once, xregion/fanout.py.
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
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.fanout import Target, each, put_all
from xregion.home import ledger_path
from xregion.payload import Payload
from xregion.store import ObjectInfo, PreconditionFailed, Store, StoreError, stores
from xregion.workers import DaemonPool

from . import reads, tombstones
from .loop import FAILURES, Drained, ReconcileLoop  # noqa: F401  (Drained: re-exported)
from .outbox import KeyState, Outbox, Owed
from .reads import CorruptCopy, NoRegionAvailable  # noqa: F401  (re-exported: their home was here)
from .seeds import Seeds

log = logging.getLogger(__name__)
MARKER_TIMEOUT = 2.0  # seconds per request for the protection markers
# A put of at most this many bytes is sent to each region as a new key (If-None-Match: *) without
# first asking for the region's copy: artifacts are written once, so the look was a request per
# region and put spent for nothing; a refused upload (the key exists) costs this little body again
ASSUME_NEW_MAX = 1 << 20


class RegionHealth:
    """A circuit breaker per region: after a failure, skip the region for a while so that writes
    record it as owed at once instead of waiting on its timeout again. The first failure skips it
    for ``first`` seconds, each further one in a row twice as long, up to ``cooldown``: a store
    restarted after a kill is tried again within a second or two, a region that stays down costs
    a timeout only every ``cooldown`` seconds."""

    def __init__(self, cooldown: float = 5.0, first: float = 1.0):
        self.cooldown, self.first = cooldown, first
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def up(self, region: str) -> bool:
        return self._down_until.get(region, 0) <= time.monotonic()

    def failed(self, region: str, seconds: float | None = None) -> None:
        """Open the breaker of ``region`` (for ``seconds``, or per the back-off above)."""
        with self._lock:
            n = self._failures[region] = self._failures.get(region, 0) + 1
            hold = min(self.cooldown, self.first * 2 ** (n - 1)) if seconds is None else seconds
            self._down_until[region] = time.monotonic() + hold

    def ok(self, region: str) -> None:
        with self._lock:
            self._down_until.pop(region, None)
            self._failures.pop(region, None)

    def reset(self) -> None:
        with self._lock:
            self._down_until.clear()
            self._failures.clear()


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


class Replicator(ReconcileLoop):
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
        self.pool = DaemonPool(4 * len(self.stores), "xregion-replicator")
        self.seeds = Seeds()
        self._markers: dict[str, Store] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held: dict[int, Owed] = {}  # leases this process holds, renewed by the heartbeat
        self._writes: set[tuple[str, int]] = set()  # writes in progress, renewed likewise
        self.on_repair: Callable[[str, str], None] | None = None
        self.lag_samples: list[float] = []  # per-object lags of this process, for benchmarks

    def reset_health(self) -> None:
        """Forget what the circuit breakers learnt: the next operation tries every region."""
        self.health.reset()

    def extra_upload_args(self) -> dict:
        return extra_upload_args()

    def marker_stores(self) -> dict[str, Store]:
        """The regions' stores with requests bounded by MARKER_TIMEOUT, for the protection markers
        every artifact write and delete reads (a frozen region must not hold each of them)."""
        with self._lock:
            if self._markers is None:
                self._markers = {
                    n: s.bounded(MARKER_TIMEOUT) if hasattr(s, "bounded") else s for n, s in self.stores.items()
                }
            return self._markers

    # --- writes ----------------------------------------------------------------------------
    def put_file(self, key: str, path: str | os.PathLike, extra: dict | None = None) -> ObjectInfo:
        """Write ``path`` as ``key``: a new generation, acknowledged per ``mode``."""
        with self.foreground():  # the background worker paces its copies meanwhile (plugins/loop.py)
            return self._put_file(key, path, extra)

    def _put_file(self, key: str, path: str | os.PathLike, extra: dict | None) -> ObjectInfo:
        extra = (guessed_type_args(str(path)) if extra is None else extra) | extra_upload_args()
        payload = Payload.read(path)  # read once: the hash and every region's body come from it
        kept = False
        try:
            gen = self._begin(key)
            state = None
            try:
                order = list(self.stores)
                healthy = [r for r in order if self.health.up(r)]
                if self.mode == "sync":
                    acked = self._put(key, payload, gen, extra, healthy)
                else:
                    acked = self._put_first(key, payload, gen, extra, healthy)
                if not acked:  # every region the breaker skipped gets one real attempt before we give up
                    acked = self._put_first(key, payload, gen, extra, [r for r in order if r not in healthy])
                if not acked:
                    raise NoRegionAvailable(f"no region accepted {key}: {', '.join(map(repr, self.stores.values()))}")
                state = KeyState(key, gen, "put", payload.sha256, payload.size)
                owe = [(r, "replicate" if r in healthy else "region-down") for r in order if r not in acked]
                kept = self.seeds.keep(key, gen, payload, extra, {r for r, _ in owe})
                self._end(key, gen, state, owe=owe, source=acked[0])
            finally:
                if state is None:  # refused or failed everywhere: whatever landed is taken back
                    self._end(key, gen, None, attempted=list(self.stores))
        finally:
            if not kept:
                payload.close()
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

    def _put(self, key: str, payload: Payload, gen: int, extra: dict, regions: list[str]) -> list[str]:
        """One upload to every region of ``regions`` at once; the regions that hold it now. Each
        upload is conditional on the copy the region held just before, and a region holding a
        newer write (a writer with a ledger of its own) keeps it: this older write counts as
        landed there and overwritten. Before, the older of two racing puts could land last and
        stay (the chaos campaign's seed 10, sync: region a kept it, b the newer)."""
        if not regions:
            return []
        if payload.size <= ASSUME_NEW_MAX:  # sent as if new: a refusal is looked at (_put_again)
            seen: dict = dict.fromkeys(regions)
        else:
            seen = each({r: self.stores[r] for r in regions}, lambda _, store: store.stat(key))
        # no upload where the look failed (its error is the region's result) or found a newer copy
        fresh = {r: c for r, c in seen.items() if not isinstance(c, StoreError) and not _newer(c, gen)}
        live = {r: _target(self.stores[r], c) for r, c in fresh.items()}
        got = put_all(live, key, payload, gen=gen, extra=extra) if live else {}
        acked = []
        for region in regions:
            result = got.get(region, seen[region])
            if isinstance(result, PreconditionFailed):  # changed since the look: look again
                result = self._put_again(region, key, payload, gen, extra)
            if _newer(result, gen):
                self.health.ok(region)
                acked.append(region)
                continue
            if isinstance(result, StoreError):
                log.warning("put %s to region %s failed: %s", key, region, result)
            if isinstance(result, StoreError) or not self._checked(region, key, gen, result):
                FAILURES.labels(region, "put").inc()
                if not isinstance(result, PreconditionFailed):  # a conflict, not an outage
                    self.health.failed(region)
            else:
                self.health.ok(region)
                acked.append(region)
        return acked

    def _put_again(self, region: str, key: str, payload: Payload, gen: int, extra: dict):
        """The region's copy changed between the look and the upload: the copy landed, a newer
        write's copy (left alone), or the error."""
        store = self.stores[region]
        for _ in range(3):
            try:
                have = store.stat(key)
                if _newer(have, gen):
                    return have
                on = _target(store, have)
                return store.put_payload(
                    key, payload, gen=gen, extra=extra, if_match=on.if_match, if_none_match=on.if_none_match
                )
            except PreconditionFailed:
                continue
            except StoreError as err:
                return err
        return PreconditionFailed(f"{key} kept changing in region {region} while it was written")

    def _checked(self, region: str, key: str, gen: int, landed: ObjectInfo) -> bool:
        """A copy that landed meets the region's delete marker (plugins/tombstones.py): taken back
        when a newer delete passed the region first. False when the region cannot be asked: the
        region is then owed the write, and its converge asks again."""
        try:
            tombstones.take_back(self.stores[region], key, gen, landed.etag)
            return True
        except StoreError as err:
            log.warning("put %s to region %s landed, but its delete marker cannot be read: %s", key, region, err)
            return False

    def _put_first(self, key, payload, gen, extra, regions) -> list[str]:
        for region in regions:
            if self._put(key, payload, gen, extra, [region]):
                return [region]
        return []

    def delete_tree(self, base: str) -> None:
        """Delete ``base`` and everything under ``base/``: a tombstone in the ledger first (so no
        copy in flight can bring a key back), then every region, each listed whatever its breaker
        says; a region that cannot be listed or fails is owed the delete of the whole tree."""
        with self.foreground():
            self._delete_tree(base)

    def _delete_tree(self, base: str) -> None:
        gen = self._begin(base, tree=True)
        try:
            keys, unlisted = reads.tree_keys(self, base)
            self.outbox.tombstone(sorted(keys), gen)  # per key: reads and listings of each see the delete
            for key in keys:
                self.seeds.drop(key)
            self.outbox.end_write(base, gen, KeyState(base, gen, "delete"), tree=True)
        finally:
            with self._lock:
                self._writes.discard((base, gen))
        futures = {r: self.pool.submit(self._delete_in, r, sorted(keys), gen) for r in self.stores if r not in unlisted}
        failed = set(unlisted) | {r for r, f in futures.items() if not f.result()}
        for region in failed:
            self.outbox.owe("delete", base, region, reason="region-down", gen=gen, tree=True)
            for key in keys:
                self.outbox.owe("delete", key, region, reason="region-down", gen=gen)
        # a put of a key racing this delete may be newer than the tombstone: converge it everywhere;
        # so may one still in progress, whose copy the deletes above may have removed after it
        # landed (chaos seed 34, async): its converge waits for it to end, then spreads the newer
        raced = [
            k
            for k in keys
            if ((s := self.outbox.newest(k)) is not None and not s.deleted) or self.outbox.writing(k, but=gen)
        ]
        for key in raced:
            for region in self.stores:
                self.outbox.owe("put", key, region, reason="concurrent-write", gen=gen)
        if failed or raced:
            self.kick()

    def _delete_in(self, region: str, keys: list[str], gen: int) -> bool:
        try:  # the region's markers first, then only copies no newer than this delete (tombstones.py)
            tombstones.mark(self.stores[region], keys, gen)
            tombstones.delete_older(self.stores[region], keys, gen)
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

    def close(self) -> None:
        """Stop the threads and the upload pool of this replicator; drop its seeds."""
        self.stop()
        self.pool.shutdown(wait=True)
        self.seeds.clear()


_replicators: dict[tuple, Replicator] = {}
_lock = threading.Lock()


def _at_exit(fn) -> None:
    # threading's own exit hooks run first, while every thread and the ledger are still usable;
    # plain atexit is the fallback
    register = getattr(threading, "_register_atexit", None)
    try:
        (register or atexit.register)(fn)
    except RuntimeError:
        atexit.register(fn)


def drain_before_exit() -> None:
    """The exit work a normal interpreter exit runs (registered with threading's exit hooks), for a
    process that leaves through ``os._exit``: a forked worker."""
    for rep in list(_replicators.values()):
        rep.drain_at_exit()


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


def _newer(copy, gen: int) -> bool:
    """``copy`` (a stat, or an error) is a write of the key newer than generation ``gen``."""
    return isinstance(copy, ObjectInfo) and (copy.gen or 0) > gen


def _target(store: Store, copy: ObjectInfo | None) -> Target:
    """The upload to ``store``, conditional on ``copy``, the region's copy looked at (None: none)."""
    return Target(store, copy.etag if copy else None, copy is None)
