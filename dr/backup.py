"""Backup and restore of the tracking and registry database, with a manifest of every artifact.

A backup is a prefix ``xregion-backups/<id>/`` in the bucket of a region other than the primary:

    db.dump        pg_dump -Fc of the MLflow database, taken in an exported snapshot
    manifest.json  per table of that same snapshot: row count and an order-independent md5 of
                   its rows; every artifact object (key, size, sha256); the dump's size and hash
    artifacts/KEY  copies of the artifact objects (only with --include-artifacts)

The fingerprints are what makes a restore checkable: a restore (or ``backup --verify``, which
restores into a scratch database) recomputes them and must find every table identical, which
also proves that ids were kept (pg_restore keeps primary keys and sequence values, unlike
export/import tools that recreate runs and renumber them).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import psycopg2.extensions

from xregion import events
from xregion.config import RegionConfig, XRegionConfig
from xregion.home import ledger_path
from xregion.infra.embedded import postgres as pg
from xregion.infra.embedded.postgres import DR_USER, PG_BIN
from xregion.plugins.outbox import Outbox
from xregion.plugins.verify import check
from xregion.processes import owned_tempdir
from xregion.store import RegionStore, RegionUnavailable, sha256_file, stores

from .nodes import DRError, primary_region

BACKUP_ROOT = "xregion-backups"
Progress = Callable[[str], None]


def _quiet(_m: str) -> None:
    pass


# --- fingerprints ----------------------------------------------------------------------------
def fingerprint(cur) -> dict[str, dict]:
    """Per table of the public schema: row count and md5 over the md5 of every row, order-independent."""
    cur.execute("set timezone = 'UTC'")
    cur.execute(
        "select tablename from pg_tables where schemaname = 'public' and tablename <> 'xregion_dr_heartbeat' order by 1"
    )
    out = {}
    for (table,) in cur.fetchall():
        cur.execute(
            f"select count(*), md5(coalesce(string_agg(h, '' order by h), '')) "
            f'from (select md5(t::text) h from public."{table}" t) s'
        )
        n, digest = cur.fetchone()
        out[table] = {"rows": n, "md5": digest}
    return out


def id_summary(cur) -> dict:
    """A human-readable digest of what matters: ids of experiments, runs, models, versions, aliases."""
    q = {
        "experiments": "select count(*), coalesce(max(experiment_id), -1) from experiments",
        "runs": "select count(*), md5(coalesce(string_agg(run_uuid, ',' order by run_uuid), '')) from runs",
        "params": "select count(*), 0 from params",
        "metrics": "select count(*), 0 from metrics",
        "tags": "select count(*), 0 from tags",
        "registered_models": "select count(*), md5(coalesce(string_agg(name, ',' order by name), '')) from registered_models",
        "model_versions": "select count(*), md5(coalesce(string_agg(name || ':' || version || ':' || current_stage, ',' "
        "order by name, version), '')) from model_versions",
        "registered_model_aliases": "select count(*), md5(coalesce(string_agg(name || ':' || alias || ':' || version, ',' "
        "order by name, alias), '')) from registered_model_aliases",
    }
    out = {}
    for k, sql in q.items():
        cur.execute("select to_regclass(%s) is not null", (f"public.{k}",))
        if not cur.fetchone()[0]:
            out[k] = None
            continue
        cur.execute(sql)
        n, extra = cur.fetchone()
        out[k] = {"count": n, "digest": str(extra)}
    return out


def compare_tables(expected: dict, got: dict) -> list[str]:
    diffs = []
    for table in sorted(set(expected) | set(got)):
        e, g = expected.get(table), got.get(table)
        if e != g:
            diffs.append(f"{table}: expected {e}, got {g}")
    return diffs


# --- artifacts manifest ----------------------------------------------------------------------
def artifact_manifest(cfg: XRegionConfig, primary: str, progress: Progress = _quiet) -> dict:
    """Every object under the artifacts prefix as its newest write (key, size, sha256), by the
    one verification (plugins/verify.check), with a region holding a good copy of each."""
    prefix = cfg.artifacts.prefix.strip("/") + "/"
    report = check(stores(cfg), prefix, Outbox(ledger_path(cfg)))
    objects = []
    for e in report.entries:
        if e.newest.deleted:
            continue
        if not e.good:
            raise DRError(f"no region holds a good copy of {e.key}; run `xregion replicate resync` first")
        region = primary if primary in e.good else e.good[0]
        objects.append({"key": e.key, "size": e.newest.size, "sha256": e.newest.sha256, "region": region})
    reachable = [
        r for r in report.regions if not any(d.region == r and d.problem == "unreachable" for d in report.differences)
    ]
    if not reachable:
        raise DRError("no region's store answers")
    source = primary if primary in reachable else reachable[0]
    progress(f"manifest: {len(objects)} artifact objects, verified across {len(reachable)} region(s)")
    return {"prefix": prefix, "source_region": source, "objects": objects}


# --- where backups live -----------------------------------------------------------------------
def backup_region(cfg: XRegionConfig, primary: str, chosen: str | None = None) -> RegionStore:
    if chosen:
        if chosen == primary:
            raise DRError(f"{chosen} is the primary region: a backup must live in another region")
        return RegionStore(cfg.region(chosen))
    for r in cfg.regions:
        if r.name != primary:
            store = RegionStore(r)
            if store.healthy():
                store.ensure_bucket()
                return store
    raise DRError("no region other than the primary has a healthy object store to hold the backup")


def list_backups(cfg: XRegionConfig) -> list[dict]:
    """Complete backups (with a manifest) in every region, newest last."""
    out = []
    for name, store in stores(cfg).items():
        try:
            dirs, _ = store.list_dir(f"{BACKUP_ROOT}/")
        except RegionUnavailable:
            continue
        for d in dirs:
            bid = d.rstrip("/").rsplit("/", 1)[-1]
            info = store.stat(f"{d}manifest.json")
            if info:
                out.append({"id": bid, "region": name, "manifest_size": info.size})
    return sorted(out, key=lambda b: b["id"])


def apply_retention(store: RegionStore, keep: int, progress: Progress = _quiet) -> list[str]:
    dirs, _ = store.list_dir(f"{BACKUP_ROOT}/")
    ids = sorted(d.rstrip("/").rsplit("/", 1)[-1] for d in dirs)
    removed = ids[:-keep] if keep > 0 else []
    for bid in removed:
        n = store.delete_prefix(f"{BACKUP_ROOT}/{bid}/")
        progress(f"retention: deleted backup {bid} ({n} objects) from region {store.name}")
    return removed


# --- pg_dump / pg_restore ---------------------------------------------------------------------
def _pg_args(region: RegionConfig) -> list[str]:
    return ["-h", region.pg_host, "-p", str(region.pg_port), "-U", DR_USER]


def _pg_env(home: Path) -> dict[str, str]:
    """pg_dump/pg_restore as the DR role: the password through PGPASSFILE, never argv."""
    return {**os.environ, **pg.child_env(home, "dr")}


def _dump(home: Path, region: RegionConfig, database: str, snapshot: str, out: Path) -> None:
    with open(out, "wb") as f:
        proc = subprocess.run(
            [
                str(PG_BIN / "pg_dump"),
                *_pg_args(region),
                "-d",
                database,
                "-Fc",
                f"--snapshot={snapshot}",
                "--no-password",
            ],
            stdout=f,
            stderr=subprocess.PIPE,
            text=False,
            timeout=3600,
            env=_pg_env(home),
        )
    if proc.returncode != 0:
        raise DRError(f"pg_dump failed: {proc.stderr.decode(errors='replace')}")


def db_fingerprint(cfg: XRegionConfig, home: Path, region: RegionConfig, database: str) -> tuple[dict, dict]:
    with pg.connection(cfg, home, region, "dr", database) as conn, conn.cursor() as cur:
        tables = fingerprint(cur)
        ids = id_summary(cur)
    return tables, ids


# --- backup ----------------------------------------------------------------------------------
def _snapshot(cfg: XRegionConfig, home: Path, primary: RegionConfig, dump: Path) -> tuple[str, dict, dict, float]:
    """(lsn, table fingerprints, id summary, pg_dump seconds): one snapshot for the dump and the
    fingerprints, so that they describe exactly the same data."""
    database = cfg.postgres.database
    with pg.connection(cfg, home, primary, "dr", database, autocommit=False) as conn:
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with conn.cursor() as cur:
            cur.execute("select pg_export_snapshot(), pg_current_wal_lsn()::text")
            snapshot, lsn = cur.fetchone()
            t_dump = time.time()
            _dump(home, primary, database, snapshot, dump)
            seconds = time.time() - t_dump
            return lsn, fingerprint(cur), id_summary(cur), seconds


def _copy_artifacts(cfg: XRegionConfig, artifacts: dict, target: RegionStore, prefix: str, tmp: Path) -> None:
    """Each object from a region the manifest found holding its newest write."""
    for obj in artifacts["objects"]:
        local = tmp / "obj"
        got = RegionStore(cfg.region(obj.get("region", artifacts["source_region"]))).get_file(obj["key"], local)
        if got.sha256 != obj["sha256"]:
            raise DRError(f"artifact {obj['key']} changed while backing up (hash differs); run the backup again")
        target.put_file(prefix + "artifacts/" + obj["key"], local, got.sha256)


def backup(
    cfg: XRegionConfig,
    home: Path,
    retention: int = 7,
    region: str | None = None,
    include_artifacts: bool = False,
    copy_to: Path | None = None,
    verify: bool = False,
    progress: Progress = _quiet,
) -> dict:
    t0 = time.time()
    primary = primary_region(cfg)
    target = backup_region(cfg, primary.name, region)
    bid = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{int(time.time() * 1000) % 1000:03d}Z"
    prefix = f"{BACKUP_ROOT}/{bid}/"
    database = cfg.postgres.database
    progress(f"backup {bid}: database {database} on {primary.name} -> region {target.name} {target.bucket}/{prefix}")

    with owned_tempdir("xregion-backup-") as tmp:
        dump = Path(tmp) / "db.dump"
        lsn, tables, ids, dump_seconds = _snapshot(cfg, home, primary, dump)
        progress(f"pg_dump: {dump.stat().st_size} bytes in {dump_seconds:.2f}s, {len(tables)} tables fingerprinted")
        artifacts = artifact_manifest(cfg, primary.name, progress)
        manifest = {
            "id": bid,
            "created": time.time(),
            "format": 1,
            "database": {
                "name": database,
                "source_region": primary.name,
                "lsn": lsn,
                "tables": tables,
                "ids": ids,
                "dump": {"key": "db.dump", "size": dump.stat().st_size, "sha256": sha256_file(dump)},
            },
            "artifacts": {**artifacts, "included": include_artifacts},
            "stored_in": {"region": target.name, "bucket": target.bucket, "prefix": prefix},
            "retention": retention,
        }
        target.put_file(prefix + "db.dump", dump, manifest["database"]["dump"]["sha256"])
        if include_artifacts:
            _copy_artifacts(cfg, artifacts, target, prefix, Path(tmp))
            progress(f"copied {len(artifacts['objects'])} artifact objects into the backup")
        # the manifest last: a backup without one is incomplete and never listed
        body = json.dumps(manifest, indent=1).encode()
        target.put_bytes(prefix + "manifest.json", body)
        if copy_to:
            _download_backup(target, prefix, Path(copy_to) / bid, include_artifacts, manifest)
            progress(f"local copy: {Path(copy_to) / bid}")
    removed = apply_retention(target, retention, progress)
    result = {
        "id": bid,
        "region": target.name,
        "bucket": target.bucket,
        "prefix": prefix,
        "dump_bytes": manifest["database"]["dump"]["size"],
        "dump_seconds": round(dump_seconds, 3),
        "tables": len(tables),
        "artifact_objects": len(artifacts["objects"]),
        "included_artifacts": include_artifacts,
        "retention_removed": removed,
        "seconds": round(time.time() - t0, 3),
        "ids": ids,
        "local_copy": str(Path(copy_to) / bid) if copy_to else None,
    }
    if verify:
        from .restore import verify_backup  # restore.py builds on this module

        result["verify"] = verify_backup(cfg, home, bid, progress=progress)
    events.record("db.backup", home, **{k: v for k, v in result.items() if k not in ("ids",)})
    return result


def _download_backup(store: RegionStore, prefix: str, dest: Path, include_artifacts: bool, manifest: dict) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    store.get_file(prefix + "db.dump", dest / "db.dump")
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if include_artifacts:
        for obj in manifest["artifacts"]["objects"]:
            store.get_file(prefix + "artifacts/" + obj["key"], dest / "artifacts" / obj["key"])
