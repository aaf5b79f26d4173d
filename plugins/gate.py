"""The promotion gate's parts: the replication check, the refusal, the lock that holds from verify to
commit, the source rule, and the protection markers that make promoted artifacts immutable.

* ``check_replicated``: every object under a version's artifact location, in every region, with the
  same size and recorded hash.
* ``GateLock``: a Postgres advisory lock per registered model, held from the check to the commit,
  so that no other promotion, alias move or delete of that model slips between them.
* ``validate_source``: a model version's artifacts must lie under the configured artifacts prefix
  (never, say, the database backups).
* Protection markers: while a version is in production (stage or alias), the object
  ``_xregion/protected/<model>/<version>`` in every region's bucket names its prefix; the artifact
  repository refuses deletes and overwrites under a protected prefix (HTTP 409), in every region's
  MLflow server and in direct clients alike, since the markers live with the objects.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from contextlib import contextmanager

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_CONFLICT

from xregion.config import XRegionConfig
from xregion.objects import RESERVED
from xregion.store import AccessError, StoreError, stores
from xregion.uris import NotReplicatedURI, key_prefix

PROTECTED = f"{RESERVED}/protected/"
MARKER_GRACE = 0.5  # seconds to wait for the other regions once one region has answered


class ReplicationGateError(MlflowException):
    """A promotion refused because the version's artifacts are not in every region."""

    def __init__(self, message: str, missing: list[dict], prefix: str):
        super().__init__(message, error_code=RESOURCE_CONFLICT)
        self.missing = missing
        self.prefix = prefix


def check_replicated(cfg: XRegionConfig, artifact_uri: str, region_stores=None) -> tuple[str, int, list[dict]]:
    """(key prefix, objects verified, problems) for every object under an artifact location.

    A problem is {key, region, problem, detail}: missing | stale | hash | size | corrupt |
    deleted | unreachable (plugins/verify.py), or ``empty`` when no region holds any object
    under the prefix and the ledger knows none. ``region_stores``: a long-lived caller's own stores
    (name -> RegionStore), so that each check does not make new S3 clients."""
    from xregion.home import ledger_path

    from .outbox import Outbox
    from .verify import check

    prefix = key_prefix(artifact_uri, cfg)
    report = check(region_stores or stores(cfg), prefix.rstrip("/") + "/", Outbox(ledger_path(cfg)))
    problems = [
        {"key": d.key, "region": d.region, "problem": d.problem, "detail": d.detail} for d in report.differences
    ]
    if report.objects == 0 and not problems:
        problems = [
            {"key": prefix + "/", "region": r.name, "problem": "empty", "detail": "no objects under the prefix"}
            for r in cfg.regions
        ]
    return prefix, report.objects, problems


def refusal_message(model: str, version: str, target: str, prefix: str, problems: list[dict]) -> str:
    by_region: dict[str, list[str]] = {}
    for p in problems:
        detail = f": {p['detail']}" if p["detail"] and p["problem"] != "missing" else ""
        by_region.setdefault(p["region"], []).append(f"{p['key']} ({p['problem']}{detail})")
    lines = [
        f"promotion of {model} version {version} to {target} refused: its artifacts are not verified in "
        f"every region (regions: {', '.join(sorted(by_region))})."
    ]
    for region in sorted(by_region):
        objs = by_region[region]
        shown = objs[:10] + ([f"... and {len(objs) - 10} more"] if len(objs) > 10 else [])
        lines.append(f"  region {region}: " + "; ".join(shown))
    lines.append(f"Repair with: xregion replicate resync --prefix {prefix}")
    lines.append("then promote again.")
    return "\n".join(lines)


def validate_source(cfg: XRegionConfig, location: str) -> str:
    """The key prefix of a model version's artifact location, which must lie under the artifacts
    prefix; otherwise MlflowException INVALID_PARAMETER_VALUE (HTTP 400) says what is allowed."""
    allowed = cfg.artifacts.prefix.strip("/") + "/"
    try:
        prefix = key_prefix(location, cfg)
    except NotReplicatedURI:
        prefix = None
    if prefix is None or not (prefix + "/").startswith(allowed) or ".." in prefix.split("/"):
        raise MlflowException(
            f"model version source {location!r} is not under the replicated artifacts prefix "
            f"(xregion:///{allowed} or mlflow-artifacts:/ of this platform's servers): log the model through "
            f"the platform, then register it",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return prefix


class GateLock:
    """One lock per registered model from the replication check to the commit: a Postgres advisory
    lock (held on its own connection, so every MLflow server in every region sees it), or a process
    lock on SQLite."""

    _local = threading.Lock()

    def __init__(self, engine):
        self.engine = engine

    @contextmanager
    def held(self, model: str):
        if self.engine.dialect.name != "postgresql":
            with self._local:
                yield
            return
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(f"xregion-gate:{model}".encode()).digest()[:8], "big", signed=True)
        with self.engine.connect() as conn:
            conn.execute(text("select pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("select pg_advisory_unlock(:k)"), {"k": key})


def marker_key(model: str, version: str) -> str:
    return f"{PROTECTED}{model}/{version}"


def protect(cfg: XRegionConfig, model: str, version: str, prefix: str, region_stores=None) -> None:
    """Mark the version's prefix immutable in every region (a region that cannot be written fails
    the promotion: the gate needs every region anyway)."""
    for store in (region_stores or stores(cfg)).values():
        store.put_bytes(marker_key(model, version), prefix.encode())


def unprotect(cfg: XRegionConfig, model: str, version: str, region_stores=None) -> list[str]:
    """The version left production: its artifacts may be deleted again. Regions that could not be
    reached keep their marker (the safe side); their names are returned."""
    missed = []
    for name, store in (region_stores or stores(cfg)).items():
        try:
            store.delete(marker_key(model, version))
        except StoreError:
            missed.append(name)
    return missed


# store -> {(marker, ETag): the prefix it protects}: a marker's body cannot change under one ETag;
# each listing replaces its store's entries, so markers removed since are forgotten
_MARKER_BODIES: dict[str, dict[tuple[str, str], str]] = {}


def protected_prefixes(store) -> set[str]:
    """Every protected prefix a region's store knows of: one listing, now. A marker's body is read
    once per ETag: every artifact write and delete asks, and a platform has a marker for every
    version ever promoted and still in production (the chaos campaign's writes slowed from 4 s to
    12 s a trial as they piled up)."""
    known = _MARKER_BODIES.get(repr(store), {})
    listed: dict[tuple[str, str], str] = {}
    found = set()
    for o in store.list(PROTECTED):
        prefix = known.get((o.key, o.etag)) if o.etag else None
        if prefix is None:
            prefix = store.get_bytes(o.key).decode()
        if o.etag:
            listed[(o.key, o.etag)] = prefix
        found.add(prefix)
    _MARKER_BODIES[repr(store)] = listed
    return found


def is_protected(key: str, prefixes: set[str]) -> str | None:
    """The protected prefix ``key`` (an object or a directory) lies in, or under which it would
    delete something; None when it touches nothing protected."""
    k = key.strip("/")
    for p in prefixes:
        if k == p or k.startswith(p + "/") or p.startswith(k + "/") or not k:
            return p
    return None


class MarkersUnreadable(StoreError):
    """No region answered with its protection markers."""


def protected_now(markers: dict, pool, health) -> set[str]:
    """Every protected prefix, read now (never cached) from the regions' stores ``markers``
    (name -> store, with short request timeouts), in parallel on ``pool``, skipping regions whose
    breaker (``health``) is open while another is left. Every region holds every marker (a
    promotion that cannot write one in each region is refused), so the union of the regions that
    answer within ``MARKER_GRACE`` of the first answer is the whole set; a region that has not
    answered by then opens its breaker. Raises MarkersUnreadable when no region answers."""
    names = [r for r in markers if health.up(r)] or list(markers)
    futures = {pool.submit(protected_prefixes, markers[r]): r for r in names}
    found: set[str] = set()
    errors: list[str] = []
    pending, deadline = set(futures), None
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
        if not done:
            break
        for future in done:
            try:
                found |= future.result()
            except StoreError as err:
                errors.append(f"{futures[future]}: {err}")
                if not isinstance(err, AccessError):
                    health.failed(futures[future])
                continue
            deadline = deadline or time.monotonic() + MARKER_GRACE
    for future in pending:
        health.failed(futures[future])
    if deadline is None:
        raise MarkersUnreadable("; ".join(errors) or "no region to ask")
    return found
