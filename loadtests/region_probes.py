"""What the region drills watch besides the Locust load, each a bounded background thread:

* ``FailoverWatch``: Patroni's view every 0.2 s (who holds the leader lock; when the new leader
  answers ``GET /primary``) and, in its own thread, libpq with the multi-host
  ``target_session_attrs=read-write`` conninfo MLflow uses: when each first sees the new
  primary. Detection, promotion and reconnection are read from it; so is which of the two ways
  of finding the new primary (libpq or Patroni's REST health check) is faster.
* ``RegistryCanary``: registry writes (registered-model tags, one key per write) through the
  regions' MLflow servers in write order, each acknowledged write kept for the read-back (RPO).
* ``SplitBrainProbe``: direct writes to one region's Postgres port (as a client that bypasses
  the multi-host URI would), counting every write that node acknowledges.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg2

from xregion import events
from xregion.config import XRegionConfig
from xregion.infra.embedded import patroni
from xregion.infra.embedded import postgres as pg
from xregion.mlflow_rest import MlflowRest, Unavailable

PROBE_DB = "xregion_probe"


def ensure_probe_table(cfg: XRegionConfig, home, leader: str) -> None:
    """A database of the DR role (not MLflow's) with the table the split-brain probe writes to."""
    region = cfg.region(leader)
    with pg.connection(cfg, home, region, "dr", "postgres") as conn, conn.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (PROBE_DB,))
        if not cur.fetchone():
            cur.execute(f'create database "{PROBE_DB}"')
    with pg.connection(cfg, home, region, "dr", PROBE_DB) as conn, conn.cursor() as cur:
        cur.execute("create table if not exists split_brain (ts float8, node text, attempt int)")


@dataclass
class Observation:
    ts: float
    leader: str | None
    primary_answers: list[str]  # nodes whose Patroni answers GET /primary with 200


class FailoverWatch:
    def __init__(self, cfg: XRegionConfig, home, max_s: float = 1800.0):
        self.cfg, self.home, self.max_s = cfg, home, max_s
        self.stop = threading.Event()
        self.observations: list[Observation] = []
        self.libpq_ok: list[tuple[float, float]] = []  # (start, end) of read-write connections that succeeded
        self.lag_before: dict[str, int | None] = {}
        self._threads = [
            threading.Thread(target=self._patroni, daemon=True, name="watch-patroni"),
            threading.Thread(target=self._libpq, daemon=True, name="watch-libpq"),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _patroni(self) -> None:
        t0, last = time.monotonic(), None
        while not self.stop.is_set() and time.monotonic() - t0 < self.max_s:
            view = patroni.cluster(self.cfg, timeout=0.5)
            name = patroni.leader(view)
            answers = [r.name for r in self.cfg.regions if patroni.get(r, "/primary", 0.5)[0] == 200]
            self.observations.append(Observation(time.time(), name, answers))
            for m in (view or {}).get("members", []):
                if m.get("role") != "leader" and isinstance(m.get("lag"), int):
                    self.lag_before[m["name"]] = m["lag"]
            if name != last:
                events.record("db.leader", self.home, leader=name, previous=last)
                last = name
            self.stop.wait(0.2)

    def _conninfo(self) -> str:
        nodes = self.cfg.write_order()
        return (
            f"host={','.join(r.pg_host for r in nodes)} port={','.join(str(r.pg_port) for r in nodes)} "
            f"dbname=postgres user={pg.DR_USER} passfile={pg.pgpass_path(self.home, 'dr')} "
            f"target_session_attrs=read-write connect_timeout=2"
        )

    def _libpq(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - t0 < self.max_s:
            start = time.time()
            try:
                conn = psycopg2.connect(self._conninfo())
                try:
                    self.libpq_ok.append((start, time.time()))
                finally:
                    conn.close()
            except psycopg2.Error:
                pass
            self.stop.wait(0.1)

    def breakdown(self, t_fault: float, old: str) -> dict:
        """Seconds from the fault: the lock taken by another node, that node answering /primary, libpq."""
        after = [o for o in self.observations if o.ts >= t_fault]
        lock = next((o for o in after if o.leader and o.leader != old), None)
        rest = next((o for o in after if any(n != old for n in o.primary_answers)), None)
        lib = next((end for start, end in self.libpq_ok if start >= t_fault), None)
        gone = next((o for o in after if o.leader != old), None)

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - t_fault, 3)

        return {
            "new_leader": lock.leader if lock else None,
            "leader_lock_gone_s": rel(gone.ts if gone else None),
            "detection_s": rel(lock.ts if lock else None),  # the lock expired and another node took it
            "rest_primary_s": rel(rest.ts if rest else None),  # Patroni answers GET /primary: promoted
            "libpq_read_write_s": rel(lib),  # the multi-host URI MLflow uses finds the new primary
            "lag_bytes_before": self.lag_before.get(lock.leader) if lock else None,
        }


class RegistryCanary(threading.Thread):
    """One registry write every ``interval`` s: a tag ``seq-N`` on a registered model of its own."""

    def __init__(self, cfg: XRegionConfig, name: str, interval: float = 0.5, max_s: float = 1800.0):
        super().__init__(daemon=True, name="registry-canary")
        self.endpoints = [r.mlflow_url for r in cfg.write_order()]
        self.name, self.interval, self.max_s = name, interval, max_s
        self.stop = threading.Event()
        self.acks: list[tuple[int, float, float, str]] = []  # (seq, sent at, acknowledged at, endpoint)
        self.failures = 0
        self.rest = MlflowRest(self.endpoints, timeout=3.0, per_endpoint=2.0)

    def _post(self, path: str, body: dict) -> str | None:
        """The endpoint that acknowledged the write, or None."""
        try:
            return self.rest.call("POST", f"/api/2.0/mlflow/{path}", json_body=body)[1]
        except Unavailable as err:
            return self.endpoints[0] if err.status and "ALREADY_EXISTS" in err.body else None

    def create(self) -> None:
        if self._post("registered-models/create", {"name": self.name}) is None:
            raise RuntimeError(f"cannot create the registry canary model {self.name} through any MLflow server")

    def run(self) -> None:
        t0, seq = time.monotonic(), 0
        while not self.stop.is_set() and time.monotonic() - t0 < self.max_s:
            sent = time.time()
            ep = self._post("registered-models/set-tag", {"name": self.name, "key": f"seq-{seq:06d}", "value": "1"})
            if ep:
                self.acks.append((seq, sent, time.time(), ep))
            else:
                self.failures += 1
            seq += 1
            self.stop.wait(self.interval)

    def read_back(self) -> dict:
        """RPO of registry writes: acknowledged tags missing from the registered model afterwards."""
        r = MlflowRest(self.endpoints, timeout=20.0, per_endpoint=10.0).get(
            "/api/2.0/mlflow/registered-models/get", name=self.name
        )
        if r is None or r.status_code != 200:
            return {"error": "no MLflow server answered the registry read-back"}
        tags = {t["key"] for t in r.json()["registered_model"].get("tags", [])}
        missing = [s for s, _, _, _ in self.acks if f"seq-{s:06d}" not in tags]
        return {"acknowledged": len(self.acks), "missing": len(missing), "missing_keys": missing[:50]}

    def delete(self) -> None:
        self._post("registered-models/delete", {"name": self.name})


@dataclass
class SplitBrainProbe:
    """Direct writes to ``region``'s Postgres port every ``every`` s for ``window`` s, each in its own
    thread (a commit waiting for a synchronous standby must not stall the probe, and must never be
    cancelled: a cancelled wait leaves the commit acknowledged). ``accepted`` counts acknowledged ones."""

    cfg: XRegionConfig
    home: object
    region: str
    window: float = 20.0
    every: float = 0.25
    outcomes: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _attempt(self, i: int) -> None:
        r = self.cfg.region(self.region)
        try:
            with pg.connection(self.cfg, self.home, r, "dr", PROBE_DB, timeout=2) as conn, conn.cursor() as cur:
                cur.execute("insert into split_brain values (%s, %s, %s)", (time.time(), self.region, i))
            self.outcomes.append("accepted")
        except psycopg2.errors.ReadOnlySqlTransaction:
            self.outcomes.append("read-only")
        except psycopg2.Error as exc:
            self.outcomes.append(f"refused: {type(exc).__name__}")

    def run(self) -> None:
        """Blocking: the window of attempts; unanswered attempts are waited for (bounded) afterwards."""
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < self.window:
            t = threading.Thread(target=self._attempt, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
            i += 1
            time.sleep(self.every)

    def result(self, wait: float = 60.0) -> dict:
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        pending = sum(1 for t in self._threads if t.is_alive())
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o] = counts.get(o, 0) + 1
        return {
            "region": self.region,
            "attempts": len(self._threads),
            "accepted": counts.get("accepted", 0),
            "outcomes": counts,
            "never_answered": pending,
        }
