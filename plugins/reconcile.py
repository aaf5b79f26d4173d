"""Converge one region on one key: the only way anything but a client's own write reaches a region.

An owed row says "region R may not hold the newest state of key K". Paying it re-reads the newest
state (the ledger's record, else the newest generation any region holds) and makes R agree:
deletes a copy older than a tombstone, copies the newest generation from a region that holds it
with the right hash. Every write to R is conditional on the copy looked at (If-Match its ETag, or
If-None-Match when there was none), and after the write the newest state is read again: if a
newer write was acknowledged meanwhile, or is in progress, the row stays owed. So a stale copy may
land for a moment but never stays, and nothing ever goes back over a newer generation.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING

from xregion.payload import SourceChanged
from xregion.processes import owned_tempdir
from xregion.store import ObjectInfo, PreconditionFailed, Store, StoreError

from . import tombstones
from .outbox import UNACKNOWLEDGED, KeyState, Owed

if TYPE_CHECKING:
    from .replication import Replicator

log = logging.getLogger(__name__)
ROUNDS = 3  # attempts per lease when a newer write keeps landing; after that the row waits its turn


class Outcome(Enum):
    DONE = "done"  # the region agrees with the newest state as of the end of the work
    WAIT = "wait"  # a write of the key is in progress, or the newest state moved: pay it again soon


class NoGoodCopy(StoreError):
    """No region holds the newest generation with the right hash (yet)."""


class CopiesUnknown(NoGoodCopy):
    """A region could not be asked for its copy of a key the ledger does not know: the newest copy
    may be the one it holds, so nothing can be concluded until it answers."""


def newest_in_stores(
    stores: dict[str, Store], key: str, skip: str | None = None, every_region: bool = False
) -> KeyState | None:
    """The newest copy any region holds, by generation (for keys the ledger does not know).
    ``every_region``: raise CopiesUnknown when a region cannot be asked, instead of answering from
    the others (a read takes what it can get; a converge must not conclude "nowhere")."""
    best: tuple[int, ObjectInfo] | None = None
    for name, store in stores.items():
        if name == skip:
            continue
        try:
            info = store.stat(key)
        except StoreError as err:
            if every_region:
                raise CopiesUnknown(f"region {name} cannot be asked for its copy of {key}: {err}") from err
            continue
        if info is not None and (best is None or (info.gen or 0) > best[0]):
            best = (info.gen or 0, info)
    if best is None:
        return None
    return KeyState(key, best[0], "put", best[1].sha256, best[1].size)


def newest(rep: Replicator, key: str) -> KeyState | None:
    """The ledger's newest write of ``key``, else the newest copy in the regions, every one asked:
    a converge that took "no region holds it" from the regions that answered dropped the take-back
    of a write that had landed only in the one that did not (chaos seed 1001, async, one core)."""
    return rep.outbox.newest(key) or newest_in_stores(rep.stores, key, every_region=True)


def converge(rep: Replicator, item: Owed) -> Outcome:
    if item.tree:
        return _converge_tree(rep, item)
    for _ in range(ROUNDS):
        if rep.outbox.writing(item.key):
            return Outcome.WAIT
        state = newest(rep, item.key)
        if state is None:
            return Outcome.DONE  # no region holds it and the ledger never heard of it
        # a write refused by its condition changed nothing here: look again, even if the ledger's
        # newest did not move (another ledger's older copy landed in between: chaos seed 1004, sync)
        if _apply(rep, item, state) and not rep.outbox.writing(item.key) and _same(newest(rep, item.key), state):
            return Outcome.DONE
    return Outcome.WAIT


def _same(a: KeyState | None, b: KeyState) -> bool:
    return a is not None and (a.gen, a.op) == (b.gen, b.op)


def _apply(rep: Replicator, item: Owed, state: KeyState) -> bool:
    """Make the region agree with ``state``; False when a conditional write found the region's
    copy changed since it was looked at (nothing was written: the caller looks again)."""
    target = rep.stores[item.region]
    try:
        if state.deleted:
            # the marker before the look: a copy landing after the look meets it (tombstones.py)
            tombstones.mark(target, [item.key], state.gen)
        have = target.stat(item.key)
        # this ledger's own write that failed, yet landed here: newer than the ledger's newest, but
        # never acknowledged (its generation is its writer's clock: no other writer's write has it)
        revoked = item.reason == UNACKNOWLEDGED and have is not None and have.gen == item.gen
        if state.deleted:
            if have is not None and ((have.gen or 0) <= state.gen or revoked):
                target.delete(item.key, if_match=have.etag)
            return True
        if have is not None and (have.gen or 0) > state.gen and not revoked:
            return True  # a newer write than the ledger knows (another writer): never undone here
        current = have is not None and have.gen == state.gen and have.sha256 == state.sha256
        if current and item.reason != "corrupt":
            tombstones.take_back(target, item.key, state.gen, have.etag)  # a write whose check failed
            return True
        if have is None and _deleted_by_another_ledger(rep, item, state):
            return True
        _copy(rep, item, state, target, have)
    except PreconditionFailed:
        log.info("%s changed in region %s while it was converged; looking again", item.key, item.region)
        return False
    return True


def _deleted_by_another_ledger(rep: Replicator, item: Owed, state: KeyState) -> bool:
    """Every region that acknowledged this put (those this ledger does not owe it) answers, and
    none holds the key: a writer with a ledger of its own (a client on another host) deleted it.
    Copying the writer's bytes now would resurrect it (the chaos campaign's seed 1008), so the
    delete is recorded here, newer than the put. A region that cannot be asked, or a put raced
    by this ledger's own delete (``concurrent-write``: its copies may be gone), is copied as before;
    so is a first copy to a healthy region (its window is milliseconds, and it runs on every write).
    The price: a region that lost its storage after acknowledging, while the other was down, has
    that key recorded as deleted (the acknowledged copy existed nowhere else but the writer's file)."""
    if item.reason in ("concurrent-write", "corrupt"):
        return False
    if item.reason == "replicate" and not item.attempts:
        return False  # the hot path, a first copy right after its write: no HEADs for a ms-wide race
    owed = rep.outbox.owed_regions(item.key)
    holders = [r for r in rep.stores if r != item.region and r not in owed]
    if not holders:
        return False
    try:
        if any(rep.stores[r].stat(item.key) is not None for r in holders):
            return False
    except StoreError:
        return False
    gen = rep.outbox.begin_write(item.key)
    if rep.outbox.writing(item.key, but=gen):
        # a write that began first would end older than this delete: record nothing, copy nothing
        # now; the converge sees that write in progress and waits for it
        rep.outbox.end_write(item.key, gen)
        return True
    rep.outbox.end_write(item.key, gen)
    # the delete is ordered just after the put it found gone, not at this clock: it is published in
    # the stores (tombstones.py), and a later clock would take back another ledger's newer put
    # that lands after this look (chaos seed 1003, async)
    rep.outbox.tombstone([item.key], state.gen + 1)
    log.warning(
        "%s (generation %s) is gone from every region that acknowledged it (%s): deleted by another "
        "ledger's writer; recorded as deleted instead of copied to region %s",
        item.key,
        state.gen,
        ", ".join(holders),
        item.region,
    )
    return True


def _seeded(rep: Replicator, item: Owed, state: KeyState, target: Store, have: ObjectInfo | None) -> bool:
    """Send the bytes this process wrote (plugins/seeds.py), re-hashed as read; False when there
    are none for this generation, or the file changed since (then a region's copy is used)."""
    seed = rep.seeds.get(item.key, state.gen, state.sha256)
    if seed is None or item.reason == "corrupt":
        return False
    try:
        info = target.put_payload(
            item.key,
            seed.payload,
            gen=state.gen or None,
            extra=seed.extra,
            if_match=have.etag if have else None,
            if_none_match=have is None,
            verify=True,
        )
    except (SourceChanged, OSError) as err:
        log.info("the written file of %s cannot seed region %s (%s): copying from a region", item.key, item.region, err)
        rep.seeds.drop(item.key)
        return False
    tombstones.take_back(target, item.key, state.gen, info.etag)
    return True


def _copy(rep: Replicator, item: Owed, state: KeyState, target: Store, have: ObjectInfo | None) -> None:
    """Stream the newest generation from a region holding it, checked against its hash (or send
    the writer's own bytes when this process wrote it)."""
    if _seeded(rep, item, state, target, have):
        return
    names = [item.source] + [r for r in rep.stores if r not in (item.source, item.region)]
    last: Exception | None = None
    with owned_tempdir("xregion-copy-") as tmp:
        local = tmp / "object"
        for name in filter(None, names):
            source = rep.stores.get(name)
            if source is None or name == item.region:
                continue
            try:
                got = source.get_file(item.key, local)
            except StoreError as err:
                last = err
                continue
            gen = got.gen or 0
            if gen < state.gen:
                last = NoGoodCopy(f"region {name} holds generation {got.gen} of {item.key}, not {state.gen}")
                continue
            # a newer generation than the ledger knows is a write that reached this region but was
            # never acknowledged (its writer was killed): the ledger's write is gone from here, so
            # the newer copy, checked against its own recorded hash as reads take it, is what to spread
            expected = (state.sha256 if gen == state.gen else None) or got.recorded
            if expected and got.sha256 != expected:
                last = NoGoodCopy(f"region {name} holds a corrupt copy of {item.key} (sha256 {got.sha256[:12]})")
                continue
            info = target.put_file(
                item.key,
                local,
                sha256=got.sha256,
                gen=gen or None,
                extra=got.upload_args | rep.extra_upload_args(),
                if_match=have.etag if have else None,
                if_none_match=have is None,
            )
            tombstones.take_back(target, item.key, gen, info.etag)
            return
    raise last or NoGoodCopy(f"no region holds generation {state.gen} of {item.key}")


def _converge_tree(rep: Replicator, item: Owed) -> Outcome:
    """A deleted prefix owed to a region that could not be listed: delete what it holds below
    the prefix, copy by copy, where the newest state of the key is a delete newer than the copy."""
    if rep.outbox.writing(item.key):
        return Outcome.WAIT
    target = rep.stores[item.region]
    base = item.key
    for obj in list(target.list(base)):
        if base and obj.key != base and not obj.key.startswith(base + "/"):
            continue
        state = rep.outbox.newest(obj.key)
        if state is None or not state.deleted:
            continue
        tombstones.mark(target, [obj.key], state.gen)
        have = target.stat(obj.key)
        if have is not None and (have.gen or 0) <= state.gen:
            try:
                target.delete(obj.key, if_match=have.etag)
            except PreconditionFailed:
                return Outcome.WAIT
    return Outcome.DONE
