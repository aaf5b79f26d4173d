"""Consistency of the whole platform: database references against the objects in every region.

- every run's, logged model's, model version's and trace's artifact location has all its objects
  in every region, with the same size (and, with ``deep``, the same recorded sha256);
- objects under the artifacts prefix that nothing references are orphans;
- each standby's replication state and lag, as the primary sees it.

Any missing or different object, any orphan, an unreachable region or a standby that does not
stream makes the result not ok (``xregion dr verify`` exits 1). Locations that are not
replicated URIs (``file:``, a plain ``s3://`` bucket) cannot be checked across regions; they are
listed as ``unchecked`` and do not fail the check.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import psycopg2
from xregion.infra.embedded import postgres as pg

from xregion.config import XRegionConfig
from xregion.store import RegionUnavailable, stores
from xregion.uris import NotReplicatedURI, key_prefix

from .nodes import ClusterView, DRError, view


def references(cfg: XRegionConfig, conn) -> list[dict]:
    """(owner, location) of everything in the database that points at artifacts."""
    refs: list[dict] = []

    def table(name: str) -> bool:
        cur.execute("select to_regclass(%s) is not null", (f"public.{name}",))
        return cur.fetchone()[0]

    with conn.cursor() as cur:
        if table("runs"):
            cur.execute("select run_uuid, artifact_uri from runs where artifact_uri is not null")
            refs += [{"owner": f"run {r}", "uri": u} for r, u in cur.fetchall()]
        models = {}
        if table("logged_models"):
            cur.execute("select model_id, artifact_location from logged_models")
            models = dict(cur.fetchall())
            refs += [{"owner": f"logged model {m}", "uri": u} for m, u in models.items()]
        if table("model_versions"):
            cur.execute("select name, version, source, storage_location from model_versions")
            runs = {r["owner"][4:]: r["uri"] for r in refs if r["owner"].startswith("run ")}
            for name, version, source, storage in cur.fetchall():
                uri = storage or source or ""
                if uri.startswith("models:/") and uri[8:].split("/")[0] in models:
                    uri = models[uri[8:].split("/")[0]]
                elif uri.startswith("runs:/"):
                    run_id, _, path = uri[6:].partition("/")
                    uri = f"{runs.get(run_id, '')}/{path}".rstrip("/") if run_id in runs else uri
                refs.append({"owner": f"model version {name}/{version}", "uri": uri})
        if table("trace_tags"):
            cur.execute("select request_id, value from trace_tags where key = 'mlflow.artifactLocation'")
            refs += [{"owner": f"trace {t}", "uri": u} for t, u in cur.fetchall()]
    return refs


def _under(keys: list[str], prefix: str) -> list[str]:
    """Keys equal to prefix or below prefix/ (keys sorted)."""
    out = []
    i = bisect.bisect_left(keys, prefix)
    if i < len(keys) and keys[i] == prefix:
        out.append(prefix)
    start = prefix + "/" if prefix else ""
    i = bisect.bisect_left(keys, start)
    while i < len(keys) and keys[i].startswith(start):
        out.append(keys[i])
        i += 1
    return out


def _read_references(cfg: XRegionConfig, home: Path, primary: str) -> list[dict]:
    try:
        with pg.connection(cfg, home, cfg.region(primary), "dr") as conn:
            return references(cfg, conn)
    except psycopg2.Error as exc:
        raise DRError(f"cannot read the MLflow database on {primary}: {exc}") from None


def standby_replication(cfg: XRegionConfig, v: ClusterView) -> tuple[list[dict], list[str]]:
    """Each standby's state and lag as Patroni reports it; problems for those that do not stream."""
    rows, problems = [], []
    for r in cfg.regions:
        if r.name == v.leader:
            continue
        m = v.member(r.name)
        sync = "sync" if r.name in v.sync_standbys else "async"
        rows.append(
            {
                "standby": r.name,
                "state": m.state if m else "unreachable",
                "sync_state": sync,
                "lag_bytes": m.lag_bytes if m else None,
                "node": (m.role or "unreachable") if m else "unreachable",
            }
        )
        if not m or m.state != "streaming":
            problems.append(f"standby {r.name} is not streaming from {v.leader}")
    return rows, problems


def _list_objects(regions: dict, roots: set[str]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Every region's objects (key -> size) under the roots; problems for regions that do not answer."""
    objects: dict[str, dict[str, int]] = {}
    problems = []
    for name, store in regions.items():
        found: dict[str, int] = {}
        try:
            for root in sorted(roots):
                for obj in store.list(root + "/" if root else ""):
                    found[obj.key] = obj.size
        except RegionUnavailable as exc:
            problems.append(f"region {name} unavailable: {exc}")
            continue
        objects[name] = found
    return objects, problems


def _compare(prefixes: dict, objects: dict, all_keys: list[str], regions: dict, deep: bool):
    """(missing, mismatched, covered keys) for every referenced prefix across regions."""
    missing, mismatched, covered = [], [], set()
    for p, owner in sorted(prefixes.items()):
        for key in _under(all_keys, p):
            covered.add(key)
            sizes = {n: objs.get(key) for n, objs in objects.items()}
            missing += [{"key": key, "region": n, "owner": owner} for n, size in sizes.items() if size is None]
            present = {n: s for n, s in sizes.items() if s is not None}
            if len(set(present.values())) > 1:
                mismatched.append({"key": key, "owner": owner, "sizes": present})
            elif deep and len(present) > 1:
                hashes = {n: regions[n].stat(key).sha256 for n in present}
                if len({h for h in hashes.values() if h}) > 1:
                    mismatched.append({"key": key, "owner": owner, "sha256": hashes})
    return missing, mismatched, covered


def verify(cfg: XRegionConfig, home: Path, deep: bool = False) -> dict:
    problems: list[str] = []
    v = view(cfg)
    if v.leader is None:
        raise DRError("no database primary (no Patroni leader): see `xregion dr status`")
    primary = v.leader
    refs = _read_references(cfg, home, primary)
    unchecked, prefixes = [], {}
    for ref in refs:
        try:
            p = key_prefix(ref["uri"], cfg)
        except NotReplicatedURI:
            unchecked.append(ref)
            continue
        prefixes.setdefault(p, ref["owner"])

    # --- every region's objects: under the artifacts prefix, and any referenced prefix outside it
    art = cfg.artifacts.prefix.strip("/")
    roots = {art} | {p for p in prefixes if not (p == art or p.startswith(art + "/"))}
    regions = stores(cfg)
    objects, unavailable = _list_objects(regions, roots)
    problems += unavailable
    all_keys = sorted(set().union(*[set(o) for o in objects.values()])) if objects else []
    missing, mismatched, covered = _compare(prefixes, objects, all_keys, regions, deep)
    orphans = [
        {"key": k, "regions": sorted(n for n, o in objects.items() if k in o)}
        for k in all_keys
        if k not in covered and (k.startswith(art + "/") or not art)
    ]

    # --- the database standbys
    replication, repl_problems = standby_replication(cfg, v)
    problems += repl_problems
    if missing:
        problems.append(f"{len(missing)} object(s) missing from a region")
    if mismatched:
        problems.append(f"{len(mismatched)} object(s) differ between regions")
    if orphans:
        problems.append(f"{len(orphans)} orphan object(s) that nothing references")
    return {
        "ok": not problems,
        "primary": primary,
        "references": len(refs),
        "locations": len(prefixes),
        "objects": {n: len(o) for n, o in objects.items()},
        "missing": missing,
        "mismatched": mismatched,
        "orphans": orphans,
        "unchecked": unchecked,
        "replication": replication,
        "problems": problems,
    }
