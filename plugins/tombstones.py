"""Deletes recorded in each region's own store, so that writers with ledgers of their own see them.

A ledger orders the writes it knows of (plugins/outbox.py), but a client with a ledger of its own
(the README's direct client on another host) and the platform's servers do not share one. Their
only common ground is each region's store, so a delete leaves a marker there, and puts check it:

- a deleter writes ``_xregion/deleted/<key>`` (empty, carrying the delete's generation) in a
  region *before* it deletes the key there, and deletes only copies no newer than its delete;
- a writer, once its copy of generation ``g`` landed in a region, reads that region's marker: a
  newer delete means the deleter already passed this region, so the writer removes its own copy
  (conditional on its ETag, never a newer write's).

Per region the store orders the three requests, so whichever of the two ran second in a region
sees the other's work: the copy lands before the delete (the deleter removes it), or after the
marker (the writer removes it). Both cost a request per key and region; markers are never read
by the artifact API (``_xregion/`` is refused there) and expire by a lifecycle rule, or stay.
"""

from __future__ import annotations

import logging

from xregion.objects import RESERVED, PreconditionFailed, Store

log = logging.getLogger(__name__)
PREFIX = f"{RESERVED}/deleted/"


def marker(key: str) -> str:
    return PREFIX + key


def mark(store: Store, keys: list[str], gen: int) -> None:
    """Record in ``store`` that ``keys`` are deleted as of ``gen`` (before deleting them there)."""
    for key in keys:
        store.put_bytes(marker(key), b"", gen=gen)


def delete_older(store: Store, keys: list[str], gen: int) -> None:
    """Delete each key's copy in ``store`` unless a newer write than ``gen`` made it (another
    writer's put, which this delete must not undo)."""
    for key in keys:
        for _ in range(3):
            have = store.stat(key)
            if have is None or (have.gen or 0) > gen:
                break
            try:
                store.delete(key, if_match=have.etag)
                break
            except PreconditionFailed:
                continue  # replaced since the stat: look at the new copy
        else:  # replaced three times over: the region is owed the delete (the caller's failure path)
            raise PreconditionFailed(f"{key} kept changing in {store!r} while it was deleted")


def newer_delete(store: Store, key: str, gen: int) -> int | None:
    """The generation of a delete of ``key`` newer than ``gen`` recorded in ``store``, or None."""
    seen = store.stat(marker(key))
    if seen is not None and (seen.gen or 0) > gen:
        return seen.gen
    return None


def take_back(store: Store, key: str, gen: int, etag: str | None) -> bool:
    """After a copy of ``key`` (generation ``gen``, ETag ``etag``) landed in ``store``: if a newer
    delete already passed this region, remove the copy again. True when it was taken back."""
    deleted = newer_delete(store, key, gen)
    if deleted is None:
        return False
    if etag is None:  # the store did not say which copy it made: only one of this generation
        have = store.stat(key)
        if have is None or have.gen != gen:
            return True
        etag = have.etag
    try:
        store.delete(key, if_match=etag)
    except PreconditionFailed:
        pass  # a newer write replaced it meanwhile: not this writer's to remove
    log.info("%s: generation %s landed in a region after a newer delete (%s) there; taken back", key, gen, deleted)
    return True
