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

from xregion.config import XRegionConfig
from xregion.home import ledger_path
from xregion.infra.embedded import postgres as pg
from xregion.plugins.outbox import Outbox
from xregion.plugins.verify import check
from xregion.store import stores
from xregion.uris import NotReplicatedURI, key_prefix

from .nodes import ClusterView, DRError, streams_by_its_own_word, view


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
        elif not streams_by_its_own_word(r):  # its member key outlives a killed node until the ttl
            rows[-1]["state"] = "not answering"
            problems.append(f"standby {r.name} is listed as streaming but its Patroni does not say so")
    return rows, problems


def _objects(cfg: XRegionConfig, prefixes: dict[str, str], deep: bool):
    """Every region's objects, by the one verification (plugins/verify.py): under the artifacts
    prefix, and any referenced prefix outside it. (objects per region, missing, mismatched,
    orphans, unreachable regions)."""
    art = cfg.artifacts.prefix.strip("/")
    roots = {art} | {p for p in prefixes if not (p == art or p.startswith(art + "/"))}
    report = check(stores(cfg), sorted(r + "/" if r else "" for r in roots), Outbox(ledger_path(cfg)), deep=deep)
    unreachable = [
        f"region {d.region} unavailable: {d.detail}" for d in report.differences if d.problem == "unreachable"
    ]
    objects = {n: sum(e.copies.get(n) is not None for e in report.entries) for n in report.regions}
    live = sorted(e.key for e in report.entries if not e.newest.deleted)
    by_key: dict[str, list] = {}
    for d in report.differences:
        by_key.setdefault(d.key, []).append(d)
    missing, mismatched, covered = [], [], set()
    for p, owner in sorted(prefixes.items()):
        under = _under(live, p)
        if not under and owner.startswith(("model version ", "logged model ")):
            # a model with no object in any region: nothing to list, everything to report
            missing += [{"key": p + "/", "region": n, "owner": owner} for n in report.regions]
        covered.update(under)
        for key in under:
            for d in by_key.get(key, []):
                row = {"key": key, "region": d.region, "owner": owner}
                if d.problem == "missing":
                    missing.append(row)
                else:
                    mismatched.append(row | {"problem": d.problem, "detail": d.detail})
    orphans = [
        {"key": e.key, "regions": sorted(n for n, c in e.copies.items() if c is not None)}
        for e in report.entries
        if not e.newest.deleted and e.key not in covered and (e.key.startswith(art + "/") or not art)
    ]
    return objects, missing, mismatched, orphans, unreachable


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

    objects, missing, mismatched, orphans, unreachable = _objects(cfg, prefixes, deep)
    problems += unreachable

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
        "objects": objects,
        "missing": missing,
        "mismatched": mismatched,
        "orphans": orphans,
        "unchecked": unchecked,
        "replication": replication,
        "problems": problems,
    }
