"""The reconcile loop that pays the ledger: a background worker, the lease heartbeat, the drain
that waits until everything (or one process's share) is paid, the bounded drain before a process
exits, and the replication metrics.

``ReconcileLoop`` is a part of ``Replicator`` (plugins/replication.py), which provides ``stores``,
``outbox``, ``health``, ``pool``, ``seeds`` and the locks this code uses.

Pacing: the machine that writes is also the one that replicates, and a copy running beside the
client's own upload slows it down. So while this process is writing (an async write in flight, or
one that ended a moment ago), the background worker leaves an owed copy for later as long as it
could still be made within ``XREGION_REPLICATION_PACE_SECONDS`` (1.5) of its write at the copy
rate seen so far; a large copy that could not wait starts at once. Once the writer is idle the
worker pays everything. Explicit drains (``wait_drained``, resync, the exit drain) never pace.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from xregion.store import StoreError

from . import outbox as ledger
from . import reconcile
from .outbox import Owed

log = logging.getLogger(__name__)

LAG = Histogram(
    "xregion_replication_lag_seconds",
    "First region ack to last region ack, per object",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
PENDING_OBJECTS = Gauge("xregion_replication_pending_objects", "Objects owed to a region", ["region"])
PENDING_BYTES = Gauge("xregion_replication_pending_bytes", "Bytes owed to a region", ["region"])
FAILURES = Counter("xregion_replication_failures_total", "Failed region operations", ["region", "op"])


IDLE_AFTER = 0.1  # seconds after its last write that a writer counts as idle
RETRY_WAITING = 0.5  # seconds: how often a drain someone waits on retries regions and rows that failed


def exit_drain_seconds() -> float:
    return float(os.environ.get("XREGION_EXIT_DRAIN_SECONDS", 30))


def pace_seconds() -> float:
    return float(os.environ.get("XREGION_REPLICATION_PACE_SECONDS", 1.5))


@dataclass(frozen=True)
class Drained:
    """What ``wait_drained`` saw: whether nothing was left owed, and what was."""

    drained: bool
    remaining: int
    seconds: float


class ReconcileLoop:
    _active = 0  # client writes of this process in progress (from reading the file to the last ack)
    _last_write = 0.0  # monotonic time a write of this process last ended
    _rate = 32.0 * 2**20  # bytes per second that copies reach (a moving average)
    _abandoned_checked = 0.0  # monotonic time the ledger was last searched for writes of dead writers

    @contextmanager
    def foreground(self):
        """A client's write (put or delete), from its first read of the file to its last ack."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
            self._last_write = time.monotonic()

    def _writing(self) -> bool:
        """Is this process writing (a write in progress, or one that ended a moment ago)?"""
        return self._active > 0 or time.monotonic() - self._last_write < IDLE_AFTER

    def _lag(self, seconds: float) -> None:
        LAG.observe(seconds)
        if len(self.lag_samples) < 100_000:
            self.lag_samples.append(seconds)

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
                paid = self.drain_once(paced=True)
            except Exception:
                log.exception("replication round failed; retrying")
                paid = 0
            if not paid:  # other processes owe work too, and paced copies fall due: look again soon
                self._wake.wait(timeout=0.05 if self._writing() else 0.25)
                self._wake.clear()

    def drain_once(self, limit: int = 16, paced: bool = False) -> int:
        """Converge up to ``limit`` owed (key, region) pairs; returns how many converged.
        ``paced``: while this process writes, only the copies that cannot wait (module doc)."""
        self._take_back_abandoned()
        skip = frozenset(r for r in self.stores if not self.health.up(r))
        due = (pace_seconds(), self._rate) if paced and pace_seconds() > 0 and self._writing() else None
        items = self.outbox.lease(limit=limit, skip_regions=skip, due=due)
        self._update_gauges()
        if not items:
            return 0
        with self._lock:
            self._held.update({i.id: i for i in items})
        self._ensure_heartbeat()
        try:
            results = self.pool.map(self._apply, items)
        finally:
            with self._lock:
                for i in items:
                    self._held.pop(i.id, None)
        self._update_gauges()
        return sum(results)

    def _take_back_abandoned(self) -> None:
        """A writer killed -9 between its upload and the end of its write left its copy wherever it
        landed, owed to nobody: every region is owed the converge that takes back a write no region
        acknowledged (chaos seed 1001, sync: region b kept a killed MLflow server's put, a had none).
        A writer of another host is found once its mark expires."""
        now = time.monotonic()
        if now - self._abandoned_checked < 1.0:
            return
        self._abandoned_checked = now
        for key, gen in self.outbox.abandoned_writes():
            log.warning(
                "the writer of %s (generation %s) is gone mid-write, or its mark expired: every region is owed "
                "its converge",
                key,
                gen,
            )
            self.outbox.end_write(key, gen, None, attempted=list(self.stores))

    def _apply(self, item: Owed) -> bool:
        if item.region not in self.stores:  # a region removed from the regions file
            self.outbox.done(item)
            return True
        t0 = time.monotonic()
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
        self.seeds.paid(item.key, item.region)
        if item.size >= 2**20:  # small copies measure latency, not rate
            self._rate = 0.7 * self._rate + 0.3 * item.size / max(time.monotonic() - t0, 1e-3)
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
        t0 = retried = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.outbox.count(owner) == 0:
                return Drained(True, 0, time.monotonic() - t0)
            if not self.drain_once():
                # someone waits on this: a region back from a restart is tried again within
                # RETRY_WAITING seconds, not when its breaker or the rows' back-off would allow
                if time.monotonic() - retried >= RETRY_WAITING:
                    self.reset_health()
                    self.outbox.release(owner)
                    retried = time.monotonic()
                time.sleep(0.05)
        left = self.outbox.count(owner)
        return Drained(left == 0, left, time.monotonic() - t0)

    def wait_replicated(self, timeout: float = 60.0) -> bool:
        return self.wait_drained(timeout).drained

    def drain_at_exit(self, timeout: float | None = None) -> Drained:
        """Before the process goes: pay what it owed, for at most ``timeout`` seconds
        (``XREGION_EXIT_DRAIN_SECONDS``, 30), and say what is left; it stays in the shared ledger
        for a replicator to pay. Every request of the drain is bounded by the timeout and tried
        once, and the drain runs in a daemon thread that is abandoned at the deadline, so a frozen
        region cannot hold the process longer (nor can a request the background worker had in
        flight: its pool's threads are daemons too)."""
        timeout = exit_drain_seconds() if timeout is None else timeout
        t0 = time.monotonic()
        if not self.outbox.count(self.outbox.owner):
            return Drained(True, 0, 0.0)
        self.reset_health()
        # tried once now, not when a back-off earned while a region was down falls due
        self.outbox.release(self.outbox.owner)
        self.stores = {n: s.bounded(timeout) if hasattr(s, "bounded") else s for n, s in self.stores.items()}
        done: list[Drained] = []
        worker = threading.Thread(
            target=lambda: done.append(self.wait_drained(timeout, owner=self.outbox.owner)),
            name="xregion-exit-drain",
            daemon=True,
        )
        worker.start()
        worker.join(timeout)
        self.outbox.give_up_leases()  # what a hanging request of this process holds is free for others at once
        left = self.outbox.count(self.outbox.owner)
        result = done[0] if done else Drained(left == 0, left, time.monotonic() - t0)
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
