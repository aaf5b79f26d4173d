"""The ledger: which write of each key is newest, and what each region is owed.

A SQLite file (WAL, synchronous=FULL: a committed row survives a kill -9 of the writer at any
point) at the path ``xregion.home.ledger_path`` names. Several processes share it (the MLflow
servers, ``xregion replicate run``, clients): one ledger per deployment.

- ``keys``: per key the newest acknowledged write, put or delete (a tombstone), with its
  generation and content hash. Reads verify against it; copies never go past it.
- ``trees``: deleted prefixes (a delete of a directory), so a key below one that a region still
  holds reads as deleted, not as missing.
- ``writing``: writes in progress. A copy that lands while a newer write is in progress checks
  again after it, so a stale copy never stays.
- ``owed``: per (key, region) a region that may not hold the newest state: a request to converge
  the region to what ``keys`` says, not a recipe (whoever pays it re-reads the newest state). A
  worker leases a row and renews the lease while it works; a newer write to the key bumps the
  row's ``seq`` without touching the lease, so the holder sees it at the end and the row stays owed.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xregion import processes

from . import ledger_db

ROW = "id, op, key, region, source, sha256, size, created, attempts, reason, gen, seq, tree"
LEASE_SECONDS = 20.0  # renewed while its worker works; a dead worker's is free at once on its host
# a write in progress, renewed likewise (every LEASE_SECONDS / 4): the mark of a writer killed on
# another host holds the converges of its key back for at most this long (on this one: none)
WRITE_SECONDS = 20.0
UNACKNOWLEDGED = "unacknowledged"  # reason: a failed write that may have landed, to take back


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
    gen: int = 0
    seq: int = 0
    tree: int = 0


@dataclass(frozen=True)
class KeyState:
    """The newest acknowledged write of a key: a put (with its hash) or a delete."""

    key: str
    gen: int
    op: str
    sha256: str | None = None
    size: int = 0

    @property
    def deleted(self) -> bool:
        return self.op == "delete"


def ancestors(key: str) -> list[str]:
    """Every prefix a tree delete could have named to cover ``key``: '', 'a', 'a/b', ... key."""
    parts = key.split("/")
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _under_sql(column: str) -> str:
    return f"({column} = ? or substr({column}, 1, length(?) + 1) = ? || '/' or ? = '')"


class Outbox:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owner, self.writer = f"{socket.gethostname()}:{os.getpid()}", processes.identity()
        self._local = threading.local()
        ledger_db.create(self._conn())

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = ledger_db.connect(self.path)
        return conn

    def _tx(self) -> ledger_db.Transaction:
        return ledger_db.Transaction(self._conn())

    # --- generations ----------------------------------------------------------------------
    def begin_write(self, key: str, tree: bool = False) -> int:
        """Allocate the generation of a new write of ``key`` (or of the tree ``key``) and record
        it as in progress: newer than anything this ledger knows of the key, else the clock."""
        with self._tx() as c:
            known = self._known_gen(c, key, tree)
            gen = max(time.time_ns(), known + 1)
            row = (key, gen, time.time() + WRITE_SECONDS, self.writer)
            c.execute("insert into writing(key, gen, until, writer) values (?, ?, ?, ?)", row)
        return gen

    def _known_gen(self, c, key: str, tree: bool) -> int:
        marks = ",".join("?" * len(ancestors(key)))
        gens = [
            c.execute("select max(gen) from keys where key = ?", (key,)).fetchone()[0],
            c.execute(f"select max(gen) from trees where base in ({marks})", ancestors(key)).fetchone()[0],
            c.execute("select max(gen) from writing where key = ?", (key,)).fetchone()[0],
        ]
        if tree:
            gens.append(c.execute(f"select max(gen) from keys where {_under_sql('key')}", (key,) * 4).fetchone()[0])
        return max([g for g in gens if g is not None], default=0)

    def abandoned_writes(self) -> list[tuple[str, int]]:
        """(key, gen) of each write in progress whose writer is gone from this host, or whose mark
        expired (a writer of any host renews it every few seconds while it runs): killed between its
        upload and ``end_write``, its copies may have landed anywhere, and nothing is owed. A frozen
        writer that wakes afterwards ends its write as usual, and what it owes converges again."""
        now = time.time()
        rows = self._conn().execute("select key, gen, writer, until from writing").fetchall()
        return [(key, gen) for key, gen, writer, until in rows if until <= now or (writer and processes.gone(writer))]

    def renew_write(self, key: str, gen: int) -> None:
        self._conn().execute(
            "update writing set until = ? where key = ? and gen = ?", (time.time() + WRITE_SECONDS, key, gen)
        )

    def end_write(
        self,
        key: str,
        gen: int,
        state: KeyState | None = None,
        tree: bool = False,
        owe: list[tuple[str, str]] = (),
        source: str | None = None,
        regions: list[str] = (),
        attempted: list[str] = (),
    ) -> None:
        """The write is over. With ``state`` (acknowledged): record it as the key's newest unless a
        newer one is, and owe it to each (region, reason) of ``owe``, in one transaction. If
        another write of the key ran at the same time, copies may have landed in any order: every
        one of ``regions`` is owed a converge. ``state`` None: nothing was acknowledged, yet it may
        have landed in any of ``attempted`` (a store died before answering): each is owed a
        converge that takes it back (``UNACKNOWLEDGED``, plugins/reconcile.py; chaos seed 1001)."""
        now = time.time()
        with self._tx() as c:
            c.execute("delete from writing where key = ? and gen = ?", (key, gen))
            if state is None:
                for region in attempted:
                    self._owe(c, "put", key, region, None, None, 0, now, UNACKNOWLEDGED, gen, False)
                return
            if tree:
                c.execute(
                    "insert into trees(base, gen) values (?, ?) on conflict(base) do update set gen = excluded.gen "
                    "where excluded.gen > trees.gen",
                    (key, gen),
                )
            else:
                c.execute(
                    """insert into keys(key, gen, op, sha256, size, acked) values (?, ?, ?, ?, ?, ?)
                       on conflict(key) do update set gen = excluded.gen, op = excluded.op, sha256 = excluded.sha256,
                         size = excluded.size, acked = excluded.acked where excluded.gen > keys.gen""",
                    (key, gen, state.op, state.sha256, state.size, now),
                )
            raced = not tree and (
                c.execute("select 1 from writing where key = ? and until > ?", (key, now)).fetchone()
                or c.execute("select 1 from keys where key = ? and gen > ?", (key, gen)).fetchone()
            )
            targets = [(r, "concurrent-write") for r in regions] if raced else list(owe)
            for region, reason in targets:
                self._owe(c, state.op, key, region, source, state.sha256, state.size, now, reason, gen, tree)

    def tombstone(self, keys: list[str], gen: int) -> None:
        """Record the delete (generation ``gen``) of every key in ``keys`` in one transaction."""
        with self._tx() as c:
            c.executemany(
                """insert into keys(key, gen, op, sha256, size, acked) values (?, ?, 'delete', null, 0, ?)
                   on conflict(key) do update set gen = excluded.gen, op = 'delete', sha256 = null, size = 0,
                     acked = excluded.acked where excluded.gen > keys.gen""",
                [(k, gen, time.time()) for k in keys],
            )

    def newest(self, key: str) -> KeyState | None:
        """The newest acknowledged write of ``key`` this ledger knows (None: it knows none)."""
        c = self._conn()
        row = c.execute("select gen, op, sha256, size from keys where key = ?", (key,)).fetchone()
        marks = ",".join("?" * len(ancestors(key)))
        tree = c.execute(f"select max(gen) from trees where base in ({marks})", ancestors(key)).fetchone()[0]
        if tree is not None and (row is None or tree > row[0]):
            return KeyState(key, tree, "delete")
        return KeyState(key, *row) if row else None

    def writing(self, key: str, but: int | None = None) -> bool:
        """Is a write of ``key`` (or a delete of a tree above it) in progress? Its copies may land
        at any moment, so a converge of the key waits for it to end. ``but``: a generation to
        leave out (the caller's own write). A writer of this host that is gone (killed mid-write)
        holds nothing: only one on another host holds the key until its mark expires."""
        marks, args = ",".join("?" * len(ancestors(key))), (time.time(), -1 if but is None else but, *ancestors(key))
        query = f"select writer from writing where until > ? and gen != ? and key in ({marks})"
        return any(not processes.gone(w) for (w,) in self._conn().execute(query, args))

    def live_keys(self, prefix: str) -> dict[str, KeyState]:
        """Keys under ``prefix`` (a key, a directory, or '' for all) whose newest write is a put."""
        rows = self._conn().execute(
            f"select key, gen, op, sha256, size from keys where op = 'put' and {_under_sql('key')}",
            (prefix.rstrip("/"),) * 4,
        )
        return {r[0]: KeyState(*r) for r in rows if not (s := self.newest(r[0])) or not s.deleted}

    def known(self, prefix: str) -> set[str]:
        """Every key under ``prefix`` whose newest write here is a put, or that a region is owed."""
        c, prefix = self._conn(), prefix.rstrip("/")
        got = {r[0] for r in c.execute(f"select key from keys where op = 'put' and {_under_sql('key')}", (prefix,) * 4)}
        got |= {r[0] for r in c.execute(f"select key from owed where tree = 0 and {_under_sql('key')}", (prefix,) * 4)}
        return got

    def dir_deleted(self, prefix: str) -> bool:
        """A directory a tree delete removed and that no newer put has filled again."""
        base = prefix.rstrip("/")
        marks = ",".join("?" * len(ancestors(base)))
        tree = (
            self._conn().execute(f"select max(gen) from trees where base in ({marks})", ancestors(base)).fetchone()[0]
        )
        if tree is None:
            return False
        newer = self._conn().execute(
            f"select 1 from keys where op = 'put' and gen > ? and {_under_sql('key')} limit 1", (tree, *(base,) * 4)
        )
        return newer.fetchone() is None

    # --- what regions are owed --------------------------------------------------------------
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
        gen: int = 0,
        tree: bool = False,
    ) -> None:
        """Record that ``region`` must converge on ``key`` (to the newest write, generation
        ``gen`` or later). A newer owe replaces an older one; an active lease is kept (its holder
        sees the new ``seq`` and leaves the row owed), a back-off is cleared."""
        self._owe(self._conn(), op, key, region, source, sha256, size, created or time.time(), reason, gen, tree)

    def _owe(self, c, op, key, region, source, sha256, size, created, reason, gen, tree) -> None:
        c.execute(
            """insert into owed(op, key, region, source, sha256, size, created, reason, gen, tree, owner)
               values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               on conflict(key, region, tree) do update set op=excluded.op, source=excluded.source,
                 sha256=excluded.sha256, size=excluded.size, created=excluded.created, reason=excluded.reason,
                 gen=excluded.gen, owner=excluded.owner, seq=owed.seq + 1, attempts=0, last_error=null,
                 lease_until=case when owed.holder is not null and owed.lease_until > ? then owed.lease_until else 0 end
               where excluded.gen >= owed.gen""",
            (op, key, region, source, sha256, size, created, reason, gen, int(tree), self.owner, time.time()),
        )

    def lease(
        self,
        limit: int = 16,
        seconds: float | None = None,
        skip_regions: frozenset[str] = frozenset(),
        due: tuple[float, float] | None = None,
    ) -> list[Owed]:
        """Claim up to ``limit`` rows nobody else holds (a holder gone from this host holds none),
        oldest first. ``due`` (budget seconds, bytes per second): only rows that could not wait
        longer and still be copied within ``budget`` s of their write at that rate (loop.py's pacing)."""
        now, seconds = time.time(), seconds or LEASE_SECONDS
        paced, args = "", ()
        if due is not None:
            paced, args = "and created + ? - size / ? <= ?", (due[0], max(due[1], 1.0), now)
        with self._tx() as c:
            marks = ",".join("?" * len(skip_regions)) or "''"
            rows = c.execute(
                f"""select {ROW} from owed where (lease_until < ? or holder is not null and gone(holder))
                    and region not in ({marks}) {paced} order by created limit ?""",
                (now, *skip_regions, *args, limit),
            ).fetchall()
            c.executemany(
                "update owed set lease_until = ?, holder = ? where id = ?",
                [(now + seconds, self.writer, r[0]) for r in rows],
            )
        return [Owed(*r) for r in rows]

    def renew(self, items: list[Owed], seconds: float | None = None) -> None:
        self._conn().executemany(
            "update owed set lease_until = ? where id = ? and holder = ?",
            [(time.time() + (seconds or LEASE_SECONDS), i.id, self.writer) for i in items],
        )

    def done(self, item: Owed) -> bool:
        """The region converged as of the row leased: drop it, unless a newer write bumped it
        meanwhile (then it is released to be paid again at once). True when dropped."""
        c = self._conn()
        if c.execute("delete from owed where id = ? and seq = ?", (item.id, item.seq)).rowcount:
            return True
        c.execute("update owed set lease_until = 0, holder = null where id = ? and holder = ?", (item.id, self.writer))
        return False

    def failed(self, item: Owed, error: str, retry_in: float, count: bool = True) -> None:
        """Back off ``retry_in`` seconds (none when a newer write bumped the row meanwhile)."""
        self._conn().execute(
            """update owed set attempts = attempts + ?, last_error = ?, holder = null,
                 lease_until = case when seq = ? then ? else 0 end where id = ?""",
            (int(count), error[:500], item.seq, time.time() + retry_in, item.id),
        )

    def release(self, owner: str | None = None) -> None:
        """Drop every back-off (an operator's retry), or those of ``owner``'s rows; leases that
        workers hold are kept."""
        where, args = ("and owner = ?", (owner,)) if owner else ("", ())
        self._conn().execute(f"update owed set lease_until = 0 where holder is null {where}", args)

    def give_up_leases(self) -> None:
        """This process stops working (it exits): the rows it holds are free for others at once."""
        self._conn().execute("update owed set lease_until = 0, holder = null where holder = ?", (self.writer,))

    def pending(self) -> dict[str, dict]:
        """Per owed region: objects, bytes, oldest write time, the last error, and deleted
        prefixes (``trees``) it is owed besides its objects."""
        rows = self._conn().execute(
            """select region, sum(tree = 0), coalesce(sum(size), 0), min(created),
                  (select last_error from owed o2 where o2.region = owed.region and last_error is not null
                   order by id desc limit 1), sum(tree)
               from owed group by region"""
        )
        return {r[0]: {"objects": r[1], "bytes": r[2], "oldest": r[3], "last_error": r[4], "trees": r[5]} for r in rows}

    def count(self, owner: str | None = None) -> int:
        if owner:
            return self._conn().execute("select count(*) from owed where owner = ?", (owner,)).fetchone()[0]
        return self._conn().execute("select count(*) from owed").fetchone()[0]

    def owed_regions(self, key: str) -> set[str]:
        """The regions owed a converge of ``key`` itself (not of a tree above it)."""
        rows = self._conn().execute("select region from owed where key = ? and tree = 0", (key,))
        return {r[0] for r in rows}

    def items(self) -> list[Owed]:
        return [Owed(*r) for r in self._conn().execute(f"select {ROW} from owed order by created")]
