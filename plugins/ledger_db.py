"""The ledger's SQLite file: its schema (upgraded in place from earlier versions), connections
(WAL, synchronous=FULL) and immediate transactions. What the rows mean is plugins/outbox.py's."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from xregion import processes

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
create table if not exists keys (
    key text primary key,
    gen integer not null,
    op text not null,              -- put | delete (a tombstone)
    sha256 text,
    size integer not null default 0,
    acked real not null
);
create table if not exists trees (base text primary key, gen integer not null);
create table if not exists writing (key text not null, gen integer not null, until real not null,
                                    primary key (key, gen));
"""
# columns added to ledgers written by earlier versions (a plain add keeps their rows)
ADDED_COLUMNS = {
    "owed": {f: "integer not null default 0" for f in ("gen", "seq", "tree")} | {"holder": "text", "owner": "text"},
    "writing": {"writer": "text"},  # xregion.processes.identity of the writing process
}

BUSY_SECONDS = 30.0


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    # a new file's switch to WAL takes the whole file, and SQLite does not wait for it on its busy
    # timeout: processes opening a new ledger at once got "database is locked"
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            conn.execute("pragma journal_mode=wal")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    conn.execute("pragma synchronous=full")
    conn.create_function("gone", 1, processes.gone)  # a lease holder of this host that died
    return conn


def create(conn: sqlite3.Connection) -> None:
    """The tables, and the columns later versions added to them (idempotent)."""
    conn.executescript(SCHEMA)
    with Transaction(conn) as c:  # two processes opening an older ledger at once: one adds, the other sees
        for table, columns in ADDED_COLUMNS.items():
            have = {r[1] for r in c.execute(f"pragma table_info({table})")}
            for name in columns.keys() - have:
                c.execute(f"alter table {table} add column {name} {columns[name]}")
    conn.execute("drop index if exists owed_key_region")
    conn.execute("create unique index if not exists owed_key_region_tree on owed(key, region, tree)")


class Transaction:
    """``begin immediate`` ... commit, or rollback on any error."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("begin immediate")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.conn.execute("rollback" if exc_type else "commit")
        return False
