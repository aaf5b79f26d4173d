"""The per-request log of a load run: one CSV row per request, written by every Locust process.

Locust's own history resolves 10 s windows; RTO needs every request with its own timestamp and
outcome, so each Locust process (the local runner, or each worker in distributed mode) appends
to its own file ``requests-<pid>.csv`` in the run directory, and the drill merges them.

Acknowledged writes (what a scientist was told is stored) go to ``acks-<pid>.csv`` the same
way; RPO is computed by reading them back after the drill.

No Locust import here: the drill process reads these files without gevent.
"""

from __future__ import annotations

import csv
import os
import threading
from dataclasses import dataclass
from pathlib import Path

REQUEST_FIELDS = ["ts", "kind", "name", "ok", "latency_ms", "error"]
ACK_FIELDS = ["ts", "kind", "run_id", "key", "step", "value", "sha256", "endpoint"]


@dataclass(frozen=True)
class Request:
    """One request: ``ts`` is the wall-clock time it started (seconds since the epoch)."""

    ts: float
    kind: str  # the persona's traffic class: serving | tracking | release
    name: str  # the Locust request name, e.g. "serving: invocations"
    ok: bool
    latency_ms: float
    error: str = ""

    @property
    def end(self) -> float:
        return self.ts + self.latency_ms / 1000.0


@dataclass(frozen=True)
class Ack:
    """A write the client was told succeeded: a metric value (key, step) or an artifact (key = path)."""

    ts: float
    kind: str  # metric | artifact
    run_id: str
    key: str
    step: int
    value: str  # the metric value as logged, or "" for an artifact
    sha256: str  # artifact content hash, "" for a metric
    endpoint: str  # the MLflow server that acknowledged it


class _CsvAppender:
    """A CSV file one process appends to; rows are flushed every ``flush_every`` rows and on close."""

    def __init__(self, path: Path, fields: list[str], flush_every: int = 50):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", newline="")
        self._w = csv.writer(self._f)
        self._lock = threading.Lock()
        self._pending = 0
        self.flush_every = flush_every
        self.rows = 0
        if new:
            self._w.writerow(fields)
            self._f.flush()

    def write(self, row: list) -> None:
        with self._lock:
            self._w.writerow(row)
            self.rows += 1
            self._pending += 1
            if self._pending >= self.flush_every:
                self._f.flush()
                self._pending = 0

    def flush(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                self._pending = 0

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()


class RequestWriter(_CsvAppender):
    def __init__(self, path: Path, flush_every: int = 50):
        super().__init__(path, REQUEST_FIELDS, flush_every)

    def add(self, ts: float, kind: str, name: str, ok: bool, latency_ms: float, error: str = "") -> None:
        self.write([f"{ts:.6f}", kind, name, 1 if ok else 0, f"{latency_ms:.3f}", (error or "")[:300]])


class AckWriter(_CsvAppender):
    def __init__(self, path: Path):
        super().__init__(path, ACK_FIELDS, flush_every=1)  # an ack is a promise: on disk at once

    def add(self, ack: Ack) -> None:
        self.write([f"{ack.ts:.6f}", ack.kind, ack.run_id, ack.key, ack.step, ack.value, ack.sha256, ack.endpoint])


def request_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("requests-*.csv"))


def ack_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("acks-*.csv"))


def _rows(path: Path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row.values() or None in row:  # a torn line (writer killed mid-row): too few/many fields
                continue
            yield row


def read_requests(paths: list[Path] | Path) -> list[Request]:
    """Every request of the given files (a torn last line, from a killed writer, is skipped), by start time."""
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    out = []
    for path in paths:
        for row in _rows(path):
            try:
                out.append(
                    Request(
                        ts=float(row["ts"]),
                        kind=row["kind"],
                        name=row["name"],
                        ok=row["ok"] == "1",
                        latency_ms=float(row["latency_ms"]),
                        error=row.get("error") or "",
                    )
                )
            except (TypeError, ValueError, KeyError):
                continue
    out.sort(key=lambda r: r.ts)
    return out


def read_acks(paths: list[Path] | Path) -> list[Ack]:
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    out = []
    for path in paths:
        for row in _rows(path):
            try:
                out.append(
                    Ack(
                        ts=float(row["ts"]),
                        kind=row["kind"],
                        run_id=row["run_id"],
                        key=row["key"],
                        step=int(row["step"]),
                        value=row["value"],
                        sha256=row["sha256"],
                        endpoint=row["endpoint"],
                    )
                )
            except (TypeError, ValueError, KeyError):
                continue
    out.sort(key=lambda a: a.ts)
    return out


def write_merged(requests: list[Request], path: Path) -> Path:
    """All requests of a run in one CSV (the raw log attached to the report)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_FIELDS)
        for r in requests:
            w.writerow([f"{r.ts:.6f}", r.kind, r.name, 1 if r.ok else 0, f"{r.latency_ms:.3f}", r.error])
    return Path(path)
