"""Restore of a backup (``xregion dr restore``) and its check (``xregion dr backup --verify``):
finding a backup in a region's bucket or a local directory, restoring its dump into the MLflow
database (or a scratch one) as the DR role on Patroni's leader, recomputing every table's
fingerprint against the manifest, and putting back missing artifact objects. See backup.py for
what a backup holds.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from xregion import events
from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded import postgres as pg
from xregion.processes import owned_tempdir
from xregion.store import RegionStore, sha256_file, stores

from .backup import BACKUP_ROOT, Progress, compare_tables, db_fingerprint, list_backups
from .nodes import DRError, primary_region


def _quiet(_m: str) -> None:
    pass


# --- finding a backup -------------------------------------------------------------------------
class BackupSource:
    """A backup either in a region's bucket (by id, or ``latest``) or in a local directory."""

    def __init__(self, cfg: XRegionConfig, ref: str):
        self.local: Path | None = None
        self.store: RegionStore | None = None
        self.prefix = ""
        p = Path(ref)
        if p.is_dir() and (p / "manifest.json").exists():
            self.local = p
            self.manifest = json.loads((p / "manifest.json").read_text())
            return
        found = list_backups(cfg)
        if ref != "latest":
            found = [b for b in found if b["id"] == ref]
        if not found:
            raise DRError(
                f"no backup {ref!r}: neither a local directory with a manifest.json nor a backup id in any "
                f"region's {BACKUP_ROOT}/ (see `xregion dr backups`)"
            )
        b = found[-1]
        self.store = RegionStore(cfg.region(b["region"]))
        self.prefix = f"{BACKUP_ROOT}/{b['id']}/"
        self.manifest = json.loads(self.store.get_bytes(self.prefix + "manifest.json"))

    @property
    def id(self) -> str:
        return self.manifest["id"]

    def fetch(self, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.local:
            shutil.copyfile(self.local / name, dest)
        else:
            self.store.get_file(self.prefix + name, dest)
        return dest

    def has(self, name: str) -> bool:
        if self.local:
            return (self.local / name).exists()
        return self.store.stat(self.prefix + name) is not None


def fetch_dump(src: BackupSource, tmp: Path) -> Path:
    dump = src.fetch("db.dump", tmp / "db.dump")
    want = src.manifest["database"]["dump"]["sha256"]
    if sha256_file(dump) != want:
        raise DRError(f"db.dump of backup {src.id} is corrupt: sha256 differs from the manifest")
    return dump


# --- verify a backup: restore into a scratch database -----------------------------------------
def verify_backup(cfg: XRegionConfig, home: Path, ref: str, progress: Progress = _quiet) -> dict:
    t0 = time.time()
    primary = primary_region(cfg)
    src = BackupSource(cfg, ref)
    scratch = f"xregion_verify_{int(time.time())}"
    with owned_tempdir("xregion-verify-") as tmp:
        dump = fetch_dump(src, Path(tmp))
        with pg.connection(cfg, home, primary, "dr", "postgres") as conn:
            with conn.cursor() as cur:
                cur.execute(f'create database "{scratch}"')
            try:
                pg.pg_restore(home, primary, scratch, dump, role=None)
                tables, ids = db_fingerprint(cfg, home, primary, scratch)
            finally:
                with conn.cursor() as cur:
                    cur.execute(f'drop database if exists "{scratch}" with (force)')
    diffs = compare_tables(src.manifest["database"]["tables"], tables)
    missing_copies = []
    if src.manifest["artifacts"].get("included"):
        for obj in src.manifest["artifacts"]["objects"]:
            if not src.has("artifacts/" + obj["key"]):
                missing_copies.append(obj["key"])
    result = {
        "id": src.id,
        "ok": not diffs and not missing_copies,
        "tables": len(tables),
        "differences": diffs,
        "missing_artifact_copies": missing_copies,
        "seconds": round(time.time() - t0, 3),
    }
    progress(
        f"verify {src.id}: {'identical' if result['ok'] else 'DIFFERENT'} "
        f"({len(tables)} tables restored into scratch database {scratch}, dropped)"
    )
    return result


# --- restore ---------------------------------------------------------------------------------
def holds_data(cfg: XRegionConfig, home: Path, primary: RegionConfig, database: str) -> bool:
    """True when the MLflow database exists and holds runs or model versions.

    An empty registered model does not count: ``xregion up`` creates the served model (with no
    versions) as the administrator on every fresh stack, so that no scientist becomes its manager."""
    with pg.connection(cfg, home, primary, "dr", "postgres") as conn, conn.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (database,))
        if cur.fetchone() is None:
            return False
    with pg.connection(cfg, home, primary, "dr", database) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('public.runs') is not null")
        if not cur.fetchone()[0]:
            return False
        cur.execute("select (select count(*) from runs) + (select count(*) from model_versions)")
        return cur.fetchone()[0] > 0


def restore(cfg: XRegionConfig, home: Path, ref: str, force: bool = False, progress: Progress = _quiet) -> dict:
    """Replace the (fresh) stack's MLflow database with the backup, then put back and verify artifacts."""
    t0 = time.time()
    primary = primary_region(cfg)
    src = BackupSource(cfg, ref)
    database, owner = cfg.postgres.database, cfg.postgres.user
    progress(f"restore {src.id} into database {database} on {primary.name}")
    if not force and holds_data(cfg, home, primary, database):
        raise DRError(
            f"database {database} on {primary.name} already holds runs or model versions; "
            f"restore is for a fresh stack (pass --force to replace them)"
        )
    with owned_tempdir("xregion-restore-") as tmp:
        dump = fetch_dump(src, Path(tmp))
        t_db = time.time()
        with pg.connection(cfg, home, primary, "dr", "postgres") as conn, conn.cursor() as cur:
            # MLflow servers' pooled connections are cut; their pool_pre_ping reconnects on the next request
            cur.execute(f'drop database if exists "{database}" with (force)')
            cur.execute(f'create database "{database}" owner "{owner}"')
            cur.execute(f'revoke connect on database "{database}" from public')
        pg.pg_restore(home, primary, database, dump, role=owner)
        db_seconds = time.time() - t_db
    tables, ids = db_fingerprint(cfg, home, primary, database)
    diffs = compare_tables(src.manifest["database"]["tables"], tables)
    progress(
        f"database restored in {db_seconds:.2f}s: "
        + ("identical to the backup" if not diffs else f"{len(diffs)} table(s) differ")
    )
    art = restore_artifacts(cfg, src, progress)
    result = {
        "id": src.id,
        "database": database,
        "region": primary.name,
        "db_seconds": round(db_seconds, 3),
        "tables": len(tables),
        "differences": diffs,
        "ids": ids,
        "artifacts": art,
        "ok": not diffs and not art["missing"] and not art["mismatched"],
        "seconds": round(time.time() - t0, 3),
    }
    events.record("db.restore", home, **{k: v for k, v in result.items() if k not in ("ids",)})
    return result


def restore_artifacts(cfg: XRegionConfig, src: BackupSource, progress: Progress = _quiet) -> dict:
    """Every manifest object must be in every region with its size and hash (downloaded and hashed).

    A missing or different object is put back from the backup's copy when it has one.
    """
    objects = src.manifest["artifacts"]["objects"]
    included = src.manifest["artifacts"].get("included")
    out = {"objects": len(objects), "verified": 0, "copied": 0, "missing": [], "mismatched": []}
    with owned_tempdir("xregion-restore-art-") as tmp:
        for name, store in stores(cfg).items():
            store.ensure_bucket()
            for obj in objects:
                key = obj["key"]
                info = store.stat(key)
                ok = info is not None and info.size == obj["size"]
                if ok:
                    got = store.get_file(key, Path(tmp) / "check").sha256
                    ok = got == obj["sha256"]
                    if not ok and not included:
                        out["mismatched"].append({"key": key, "region": name, "sha256": got, "expected": obj["sha256"]})
                        continue
                if not ok:
                    if not included:
                        out["missing"].append({"key": key, "region": name})
                        continue
                    local = src.fetch("artifacts/" + key, Path(tmp) / "copy")
                    if sha256_file(local) != obj["sha256"]:
                        out["mismatched"].append(
                            {
                                "key": key,
                                "region": name,
                                "expected": obj["sha256"],
                                "sha256": sha256_file(local),
                                "where": "backup copy",
                            }
                        )
                        continue
                    store.put_file(key, local, obj["sha256"])
                    out["copied"] += 1
                    if store.get_file(key, Path(tmp) / "check").sha256 != obj["sha256"]:
                        out["mismatched"].append({"key": key, "region": name, "expected": obj["sha256"]})
                        continue
                out["verified"] += 1
    progress(
        f"artifacts: {out['verified']} object copies verified across {len(cfg.regions)} regions, "
        f"{out['copied']} put back from the backup, {len(out['missing'])} missing, "
        f"{len(out['mismatched'])} mismatched"
    )
    return out
