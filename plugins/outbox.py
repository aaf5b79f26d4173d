"""The durable ledger of what regions are owed: puts and deletes not yet applied to a region.

A SQLite file under XREGION_HOME (WAL, synchronous=FULL: a committed row survives a kill -9 of
the writer at any point). Several processes on a host share it (the MLflow server, the
`xregion replicate run` service, clients): a worker leases a row before copying, so two
replicators never copy the same object at once, and a lease left by a killed worker expires.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
create table if not exists owed (
    id integer primary key autoincrement,
    op text not null check (op in ('put', 'delete')),
    key text not null,
    region text not null,          -- the region that is owed the operation
    source text,                   -- for a put: a region believed to hold a good copy
    sha256 text,
    size integer not null default 0,
    created real not null,         -- when the first region acknowledged the write (lag starts)
    lease_until real not null default 0,
    attempts integer not null default 0,
    last_error text,
    reason text not null default 'replicate'   -- replicate | region-down | repair
);
create unique index if not exists owed_key_region on owed(key, region);
"""


@dataclass(frozen=True)
class Owed:
    id: int
    op: str
    key: str
    region: str
    source: str | None
    sha256: str | None
    size: int
    created: float
    attempts: int
    reason: str


class Outbox:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=full")
            self._local.conn = conn
        return conn

    def owe(
        self,
        op: str,
        key: str,
        region: str,
        *,
        source: str | None = None,
        sha256: str | None = None,
        size: int = 0,
        created: float | None = None,
        reason: str = "replicate",
    ) -> None:
        """Record that ``region`` is owed ``op`` on ``key``; a later operation on the key replaces it."""
        self._conn().execute(
            """insert into owed(op, key, region, source, sha256, size, created, reason)
               values (?, ?, ?, ?, ?, ?, ?, ?)
               on conflict(key, region) do update set op=excluded.op, source=excluded.source,
                 sha256=excluded.sha256, size=excluded.size, created=excluded.created,
                 reason=excluded.reason, lease_until=0, attempts=0, last_error=null""",
            (op, key, region, source, sha256, size, created or time.time(), reason),
        )

    def lease(self, limit: int = 16, seconds: float = 60.0, skip_regions: frozenset[str] = frozenset()) -> list[Owed]:
        """Claim up to ``limit`` rows nobody else holds, oldest first."""
        now = time.time()
        conn = self._conn()
        conn.execute("begin immediate")
        try:
            marks = ",".join("?" * len(skip_regions)) or "''"
            rows = conn.execute(
                f"""select id, op, key, region, source, sha256, size, created, attempts, reason from owed
                    where lease_until < ? and region not in ({marks}) order by created limit ?""",
                (now, *skip_regions, limit),
            ).fetchall()
            conn.executemany("update owed set lease_until = ? where id = ?", [(now + seconds, r[0]) for r in rows])
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return [Owed(*r) for r in rows]

    def done(self, item: Owed) -> None:
        # only the row as leased: a newer write to the same key replaced it and stays owed
        self._conn().execute(
            "delete from owed where id = ? and created = ? and op = ?", (item.id, item.created, item.op)
        )

    def failed(self, item: Owed, error: str, retry_in: float) -> None:
        self._conn().execute(
            "update owed set attempts = attempts + 1, last_error = ?, lease_until = ? where id = ? and created = ?",
            (error[:500], time.time() + retry_in, item.id, item.created),
        )

    def release(self) -> None:
        """Drop every lease and back-off (after a repair run gave up, or an operator's retry)."""
        self._conn().execute("update owed set lease_until = 0")

    def pending(self) -> dict[str, dict]:
        """Per owed region: objects, bytes, oldest write time and the last error."""
        rows = (
            self._conn()
            .execute(
                """select region, count(*), coalesce(sum(size), 0), min(created),
                      (select last_error from owed o2 where o2.region = owed.region and last_error is not null
                       order by id desc limit 1)
               from owed group by region"""
            )
            .fetchall()
        )
        return {r[0]: {"objects": r[1], "bytes": r[2], "oldest": r[3], "last_error": r[4]} for r in rows}

    def count(self) -> int:
        return self._conn().execute("select count(*) from owed").fetchone()[0]

    def items(self) -> list[Owed]:
        return [
            Owed(*r)
            for r in self._conn().execute(
                "select id, op, key, region, source, sha256, size, created, attempts, reason from owed order by created"
            )
        ]
