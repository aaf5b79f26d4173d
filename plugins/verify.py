"""Every object in every region, compared with the newest acknowledged write: the one
implementation that ``xregion replicate verify|resync``, the registry gate, ``xregion dr verify``
and the DR backup manifest all use.

The keys compared are the union of every region's listing and every key the ledger knows as
written and not deleted, so an object missing from every region is still reported. The truth for
a key is the ledger's newest write, else the newest generation any region holds: never the
primary's metadata. Copies whose ETags disagree are downloaded and hashed, which tells silent
corruption from a different multipart layout; ``deep`` hashes every copy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xregion.processes import owned_tempdir
from xregion.store import ObjectInfo, Store, StoreError

from .outbox import KeyState, Outbox
from .replication import Replicator
from .tombstones import PREFIX as MARKERS

PROBLEMS = ("missing", "stale", "hash", "size", "corrupt", "deleted", "unreachable")


@dataclass
class Difference:
    key: str
    region: str
    problem: str  # one of PROBLEMS
    detail: str
    good_source: str | None  # a region holding a verified good copy

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Entry:
    """One key: its newest write and what each region holds (None: no copy)."""

    key: str
    newest: KeyState
    copies: dict[str, ObjectInfo | None]
    good: list[str]  # regions whose copy is the newest write, verified as far as checked


@dataclass
class Report:
    objects: int  # keys whose newest write is a put
    regions: list[str]
    differences: list[Difference]
    entries: list[Entry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def counts(self) -> dict[str, int]:
        """Differences per problem (every problem named, zeros included)."""
        got = Counter(d.problem for d in self.differences)
        return {p: got.get(p, 0) for p in PROBLEMS}

    @property
    def verified(self) -> dict[str, int]:
        """Per region: copies that are the newest write."""
        return {r: sum(r in e.good for e in self.entries if not e.newest.deleted) for r in self.regions}

    def as_dict(self) -> dict:
        return {
            "objects": self.objects,
            "regions": self.regions,
            "ok": self.ok,
            "counts": self.counts,
            "verified": self.verified,
            "differences": [d.as_dict() for d in self.differences],
        }


def _hash(store: Store, key: str, tmp: Path) -> str | None:
    try:
        return store.get_file(key, tmp / "obj").sha256
    except StoreError:
        return None


def _list(stores: dict[str, Store], prefixes: list[str], diffs: list[Difference]) -> dict[str, dict[str, ObjectInfo]]:
    listings: dict[str, dict[str, ObjectInfo]] = {}
    for name, store in stores.items():
        try:
            store.ensure_bucket()  # a store that came back empty (lost its disk) gets its bucket again
            # the delete markers (tombstones.py) are bookkeeping, written region by region
            listings[name] = {o.key: o for p in prefixes for o in store.list(p) if not o.key.startswith(MARKERS)}
        except StoreError as err:
            diffs.append(Difference("*", name, "unreachable", str(err), None))
    return listings


def check(
    stores: dict[str, Store],
    prefixes: list[str] | str = "",
    ledger: Outbox | None = None,
    deep: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Compare every object under ``prefixes`` in every region with its newest write."""
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    diffs: list[Difference] = []
    listings = _list(stores, prefixes, diffs)
    keys = set().union(*[set(v) for v in listings.values()]) if listings else set()
    if ledger is not None:
        for p in prefixes:
            keys |= set(ledger.live_keys(p))
    keys = {k for k in keys if any(k.startswith(p) for p in prefixes)}
    entries = []
    with owned_tempdir("xregion-verify-") as tmpdir:
        for i, key in enumerate(sorted(keys)):
            copies = {r: lst.get(key) for r, lst in listings.items()}
            entry = _compare(stores, key, copies, ledger, deep, Path(tmpdir), diffs)
            if entry is not None:
                entries.append(entry)
            if progress:
                progress(i + 1, len(keys))
    live = sum(not e.newest.deleted for e in entries)
    return Report(live, list(stores), diffs, entries)


def _heads(stores, key, copies) -> dict[str, ObjectInfo | None]:
    heads = {}
    for r, listed in copies.items():
        try:
            heads[r] = stores[r].stat(key) if listed is not None else None
        except StoreError:
            heads[r] = None
    return heads


def _compare(stores, key, copies, ledger, deep, tmp, diffs) -> Entry | None:
    heads = _heads(stores, key, copies)
    newest = ledger.newest(key) if ledger is not None else None
    if newest is None:
        held = [(h.gen or 0, h) for h in heads.values() if h is not None]
        if not held:
            return None
        gen, head = max(held, key=lambda t: t[0])
        newest = KeyState(key, gen, "put", head.sha256, head.size)
    if newest.deleted:
        for r, h in heads.items():
            if h is not None and (h.gen or 0) <= newest.gen:
                diffs.append(Difference(key, r, "deleted", f"deleted (generation {newest.gen}) but still here", None))
        return Entry(key, newest, heads, [])
    present = {r: h for r, h in heads.items() if h is not None}
    etags = {copies[r].etag for r in present if copies.get(r)}
    content = {}
    if deep or len(etags) > 1 or any(h.sha256 != newest.sha256 for h in present.values()):
        content = {r: _hash(stores[r], key, tmp) for r in present}
    good = [r for r in stores if r in present and _good(present[r], newest, content.get(r, present[r].sha256))]
    source = good[0] if good else None
    for region in heads:
        problem = _problem(heads[region], newest, content.get(region), bool(content))
        if problem:
            diffs.append(Difference(key, region, problem[0], problem[1], source))
    return Entry(key, newest, heads, good)


def _good(head: ObjectInfo, newest: KeyState, content: str | None) -> bool:
    same = head.size == newest.size or not newest.size
    return same and (content == newest.sha256 if newest.sha256 else (head.gen or 0) >= newest.gen)


def _problem(head: ObjectInfo | None, newest: KeyState, content: str | None, hashed: bool) -> tuple[str, str] | None:
    if head is None:
        return "missing", "not in this region"
    if hashed and newest.sha256 and content == newest.sha256:
        return None  # the newest write's bytes, whatever the copy's labels say
    if (head.gen or 0) < newest.gen and head.sha256 != newest.sha256:
        return "stale", f"generation {head.gen or 0} is older than the newest, {newest.gen}"
    if hashed and newest.sha256 and content != newest.sha256:
        return "corrupt", f"content sha256 {str(content)[:12]} != recorded {newest.sha256[:12]}"
    if head.sha256 != newest.sha256:
        return "hash", "recorded hash differs from the newest write's"
    if newest.size and head.size != newest.size:
        return "size", f"{head.size} bytes, the newest write has {newest.size}"
    return None


def verify(
    rep: Replicator, prefix: str = "", deep: bool = False, progress: Callable[[int, int], None] | None = None
) -> tuple[int, list[Difference]]:
    """(objects compared, differences): ``check`` over a replicator's stores and ledger."""
    report = check(rep.stores, prefix, rep.outbox, deep, progress)
    return report.objects, report.differences


@dataclass
class ResyncResult:
    objects: int
    differences: int
    repaired: int
    still_owed: int
    unrepairable: list[dict]
    unreachable: list[str]
    counts: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The counts a drill or a region restore reports (unrepairable keys counted, not listed)."""
        out = {k: getattr(self, k) for k in ("objects", "differences", "repaired", "still_owed", "unreachable")}
        return out | {"unrepairable": len(self.unrepairable)}


def owe_repairs(rep: Replicator, report: Report) -> None:
    """Owe every difference a converge to the newest write (which a repair re-reads itself)."""
    newest = {e.key: e.newest for e in report.entries}
    for d in report.differences:
        state = newest.get(d.key)
        if d.problem == "unreachable" or state is None:
            continue
        op = "delete" if state.deleted else "put"
        reason = "corrupt" if d.problem == "corrupt" else "repair"
        rep.outbox.owe(op, d.key, d.region, source=d.good_source, reason=reason, gen=state.gen, size=state.size)


def resync(
    rep: Replicator,
    prefix: str = "",
    deep: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float = 120.0,
) -> ResyncResult:
    """Owe every difference a converge, then pay everything owed. Idempotent."""
    report = check(rep.stores, prefix, rep.outbox, deep, (lambda i, n: progress("verify", i, n)) if progress else None)
    diffs = report.differences
    unrepairable = [d for d in diffs if d.good_source is None and d.problem not in ("unreachable", "deleted")]
    owe_repairs(rep, report)
    rep.outbox.release()  # retry now what earlier failures put on back-off
    owed = rep.outbox.count()
    done = 0
    deadline = time.monotonic() + timeout
    while rep.outbox.count() and time.monotonic() < deadline:
        rep.reset_health()  # the operator asked for a repair now: retry every region
        paid = rep.drain_once(limit=32)
        done += paid
        if progress:
            progress("copy", min(done, owed), max(owed, done))
        if not paid:
            time.sleep(0.5)  # a failed copy is retried once its back-off lease expires
    if rep.outbox.count():
        rep.outbox.release()  # leave what is still owed ready for the next replicator
    return ResyncResult(
        objects=report.objects,
        differences=len(diffs),
        repaired=done,
        still_owed=rep.outbox.count(),
        unrepairable=[d.as_dict() for d in unrepairable],
        unreachable=[d.region for d in diffs if d.problem == "unreachable"],
        counts=report.counts,
    )


def as_rows(diffs: list[Difference]) -> list[dict]:
    return [d.as_dict() for d in diffs]
