"""Reads over every region: downloads checked against the newest acknowledged write, listings
that are the union of every region less what was deleted, and the key set of a tree delete.

A copy is good when it is the newest generation the ledger knows (or newer: a write the ledger
has not heard of yet) and its bytes hash to that write's hash. Missing, older or corrupt copies
are refused, read from another region, and owed a converge, which re-reads the newest state
itself: a read never decides what is copied where.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from xregion.store import AccessError, ObjectNotFound, StoreError

from .reconcile import newest_in_stores

if TYPE_CHECKING:
    from .replication import Replicator

log = logging.getLogger(__name__)


class NoRegionAvailable(StoreError):
    pass


class CorruptCopy(StoreError):
    pass


def get_file(rep: Replicator, key: str, local_path: str) -> str:
    """Download the newest acknowledged write of ``key``, local region first. Returns the region."""
    state = rep.outbox.newest(key)
    if state is not None and state.deleted:
        raise ObjectNotFound(f"{key} was deleted")
    state = state or newest_in_stores(rep.stores, key)
    if state is None:
        raise ObjectNotFound(f"{key} is in no region")
    problems: list[str] = []
    missing = 0
    for region in rep.cfg.read_order():
        name = region.name
        if not rep.health.up(name) and len(problems) < len(rep.stores) - 1:
            problems.append(f"{name}: marked down")
            continue
        try:
            got = rep.stores[name].get_file(key, local_path)
        except ObjectNotFound:
            problems.append(f"{name}: missing")
            missing += 1
            rep.owe_repair(key, name, state.gen)
            continue
        except StoreError as err:
            problems.append(f"{name}: {err}")
            rep.health.failed(name)
            continue
        gen = got.gen or 0
        if gen < state.gen and got.sha256 != state.sha256:  # same bytes under an older label are good
            problems.append(f"{name}: generation {gen} is older than the newest, {state.gen}")
            rep.owe_repair(key, name, state.gen)
            continue
        # a copy newer than the ledger knows is a write in progress elsewhere: its own record holds
        expected = state.sha256 if gen == state.gen else got.recorded
        if expected and got.sha256 != expected:
            problems.append(f"{name}: content hash {got.sha256[:12]} != recorded {expected[:12]}")
            log.error("corrupt copy of %s in region %s; reading another region", key, name)
            rep.owe_repair(key, name, state.gen, reason="corrupt")
            continue
        rep.health.ok(name)
        return name
    detail = f"no good copy of {key} in any region ({'; '.join(problems)})"
    if missing == len(rep.stores):
        raise ObjectNotFound(detail)
    raise NoRegionAvailable(detail)


def list_dir(rep: Replicator, prefix: str) -> tuple[set[str], dict[str, int]]:
    """The union of every reachable region's listing (a lagging region hides nothing), less the
    keys and directories whose newest write is a delete (a region that still owes it hides none)."""
    dirs: set[str] = set()
    files: dict[str, int] = {}
    errors: list[StoreError] = []
    futures = {r: rep.pool.submit(s.list_dir, prefix) for r, s in rep.stores.items() if rep.health.up(r)}
    for region, fut in futures.items():
        try:
            d, f = fut.result()
        except StoreError as err:
            errors.append(err)
            if not isinstance(err, AccessError):
                rep.health.failed(region)
            continue
        dirs |= set(d)
        for o in f:
            files.setdefault(o.key, o.size)
    if len(errors) == len(futures):
        raise _listing_error(prefix, errors)
    for key in list(files):
        state = rep.outbox.newest(key)
        if state is not None and state.deleted:
            del files[key]
        elif state is not None:
            files[key] = state.size
    return {d for d in dirs if not rep.outbox.dir_deleted(d)}, files


def _listing_error(prefix: str, errors: list[StoreError]) -> StoreError:
    """Every region refused: a refusal (credentials, permissions, no bucket) is reported as the
    store said it, not as an outage."""
    refusals = [e for e in errors if isinstance(e, AccessError)]
    if refusals and len(refusals) == len(errors):
        return refusals[0]
    if not errors:
        return NoRegionAvailable(f"no region could list {prefix!r}: every region is marked down")
    return NoRegionAvailable(f"no region could list {prefix!r}: " + "; ".join(str(e) for e in errors))


def _under(key: str, base: str) -> bool:
    return not base or key == base or key.startswith(base + "/")


def tree_keys(rep: Replicator, base: str) -> tuple[set[str], list[str]]:
    """Every key under ``base`` that a region holds or the ledger knows, listing every region
    whatever its breaker says (an object may have reached only a region the breaker skips);
    and the regions that could not be listed."""
    keys = set(rep.outbox.known(base))
    unlisted = []
    futures = {r: rep.pool.submit(lambda s=s: [o.key for o in s.list(base)]) for r, s in rep.stores.items()}
    for region, fut in futures.items():
        try:
            keys |= {k for k in fut.result() if _under(k, base)}
        except StoreError as err:
            log.warning("cannot list %r in region %s for a delete (it is owed the delete): %s", base, region, err)
            unlisted.append(region)
    return keys, unlisted
