"""Compare every object in every region (key, size, hash) and repair what differs.

Listing gives key, size and the store's ETag; the hash recorded at write comes from a HEAD per
copy. Copies whose ETags disagree while everything else agrees are hashed (downloaded) to tell
a corrupt copy from a different multipart layout; ``deep`` hashes every copy.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from xregion.store import ObjectInfo, StoreError

from .replication import Replicator


@dataclass
class Difference:
    key: str
    region: str
    problem: str  # missing | size | hash | corrupt | unreachable
    detail: str
    good_source: str | None  # a region holding a verified good copy

    def as_dict(self) -> dict:
        return asdict(self)


def _content_hash(rep: Replicator, region: str, key: str, tmp: Path) -> str | None:
    try:
        return rep.stores[region].get_file(key, tmp / "obj").sha256
    except StoreError:
        return None


def verify(
    rep: Replicator, prefix: str = "", deep: bool = False, progress: Callable[[int, int], None] | None = None
) -> tuple[int, list[Difference]]:
    """(objects compared, differences). A region that cannot be listed is one difference."""
    listings: dict[str, dict[str, ObjectInfo]] = {}
    diffs: list[Difference] = []
    for name, store in rep.stores.items():
        try:
            store.ensure_bucket()  # a store that came back empty (lost its disk) gets its bucket again
            listings[name] = {o.key: o for o in store.list(prefix)}
        except StoreError as err:
            diffs.append(Difference("*", name, "unreachable", str(err), None))
    keys = sorted(set().union(*[set(v) for v in listings.values()])) if listings else []
    with tempfile.TemporaryDirectory(prefix="xregion-verify-") as tmpdir:
        tmp = Path(tmpdir)
        for i, key in enumerate(keys):
            diffs += _compare(rep, key, {r: lst.get(key) for r, lst in listings.items()}, deep, tmp)
            if progress:
                progress(i + 1, len(keys))
    return len(keys), diffs


def _compare(
    rep: Replicator, key: str, copies: dict[str, ObjectInfo | None], deep: bool, tmp: Path
) -> list[Difference]:
    present = {r: o for r, o in copies.items() if o is not None}
    heads = {}
    for r in present:
        try:
            heads[r] = rep.stores[r].stat(key)
        except StoreError:
            heads[r] = None
    recorded = next((h.sha256 for r in rep.stores if (h := heads.get(r)) and h.sha256), None)
    etags = {o.etag for o in present.values()}
    sizes = {o.size for o in present.values()}
    content: dict[str, str | None] = {}
    if deep or len(etags) > 1 or len(sizes) > 1 or any(h and h.sha256 != recorded for h in heads.values()):
        content = {r: _content_hash(rep, r, key, tmp) for r in present}
    good = [r for r in rep.stores if r in present and (not content or (recorded and content.get(r) == recorded))]
    source = good[0] if good else None
    out = []
    for region, obj in copies.items():
        if obj is None:
            out.append(Difference(key, region, "missing", "not in this region", source))
        elif content and recorded and content.get(region) != recorded:
            out.append(
                Difference(
                    key,
                    region,
                    "corrupt",
                    f"content sha256 {str(content.get(region))[:12]} != recorded {recorded[:12]}",
                    source,
                )
            )
        elif not content and heads.get(region) and heads[region].sha256 != recorded:
            out.append(Difference(key, region, "hash", "recorded hash differs from other regions", source))
    return out


def resync(
    rep: Replicator,
    prefix: str = "",
    deep: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float = 120.0,
) -> dict:
    """Owe every difference a repair from a good copy, then pay everything owed. Idempotent."""
    total, diffs = verify(rep, prefix, deep, (lambda i, n: progress("verify", i, n)) if progress else None)
    unrepairable = [d for d in diffs if d.good_source is None and d.problem != "unreachable"]
    for d in diffs:
        if d.good_source and d.region != d.good_source:
            rep.outbox.owe("put", d.key, d.region, source=d.good_source, reason="repair")
    rep.outbox.release()  # retry now what earlier failures put on back-off
    owed = rep.outbox.count()
    done = 0
    deadline = time.monotonic() + timeout
    while rep.outbox.count() and time.monotonic() < deadline:
        rep.health = type(rep.health)()  # the operator asked for a repair now: retry every region
        paid = rep.drain_once(limit=32)
        done += paid
        if progress:
            progress("copy", min(done, owed), max(owed, done))
        if not paid:
            time.sleep(0.5)  # a failed copy is retried once its back-off lease expires
    if rep.outbox.count():
        rep.outbox.release()  # leave what is still owed ready for the next replicator
    return {
        "objects": total,
        "differences": len(diffs),
        "repaired": done,
        "still_owed": rep.outbox.count(),
        "unrepairable": [d.as_dict() for d in unrepairable],
        "unreachable": [d.region for d in diffs if d.problem == "unreachable"],
    }


def as_rows(diffs: list[Difference]) -> list[dict]:
    return [d.as_dict() for d in diffs]
