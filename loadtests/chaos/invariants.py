"""What the platform holds after a trial, read for the checker: every key's bytes in every region,
a deep verify of the trial's prefix, the gate's verdict on versions in production, and the ledger.

All of it is read directly from the region stores and the registry, never through the code under
test's caches: a region holds the bytes it holds.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.plugins.outbox import Outbox
from xregion.plugins.verify import Difference, check
from xregion.store import ObjectNotFound, RegionStore
from xregion.uris import key_prefix

from .workload import TrialContext


def drain(home: Path, prefix: str, timeout: float) -> list[str]:
    """Wait until the host's ledger owes nothing under ``prefix``; returns what is still owed then.

    Leases are reset first and every 10 s, as ``xregion replicate resync`` does (an operator's
    retry): work a killed replicator leased is paid now, not when its lease expires. Replication
    must stay correct when a lease is reset under a live replicator. Only the trial's own keys
    count: a row an earlier trial left stuck (a bug that trial reported) does not hold this one."""
    outbox = Outbox(home / "outbox.sqlite")

    def owed() -> list:
        return [item for item in outbox.items() if item.key.startswith(prefix)]

    deadline = time.monotonic() + timeout
    released = 0.0
    while owed() and time.monotonic() < deadline:
        if time.monotonic() - released > 10:
            outbox.release()
            released = time.monotonic()
        time.sleep(0.2)
    time.sleep(0.5)  # a stale copy whose row a newer write replaced may still be on its way
    return [f"{i.op} {i.key} to {i.region} ({i.reason}, {i.attempts} attempts)" for i in owed()]


def observe(regions: dict[str, RegionStore], ctx: TrialContext, keys: list[str]) -> dict[str, dict[str, str | None]]:
    """key -> region -> sha256 of the bytes the region holds (None: absent)."""
    out: dict[str, dict[str, str | None]] = {}
    for key in keys:
        full = f"{ctx.artifacts_prefix}/{ctx.prefix}/{key}"
        out[key] = {}
        for name, store in regions.items():
            try:
                out[key][name] = hashlib.sha256(store.get_bytes(full)).hexdigest()
            except ObjectNotFound:
                out[key][name] = None
    return out


def verify_prefix(regions: dict[str, RegionStore], prefix: str) -> list[Difference]:
    """``xregion replicate verify --deep`` on a prefix: every copy hashed."""
    return check(regions, prefix.rstrip("/") + "/", deep=True).differences


def gate_violations(cfg: XRegionConfig, regions: dict[str, RegionStore], client, ctx: TrialContext) -> list[dict]:
    """Versions in the production stage or under the production alias whose artifacts do not
    verify in every region now: the gate's own comparison (``plugins/verify.py``) over the
    version's artifact location, and a location no region holds anything under."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(ctx.model).aliases or {}
    except MlflowException:  # the registry client died before it created the model
        return []
    champion = str(aliases.get(cfg.registry.production_alias, ""))
    out = []
    for mv in client.search_model_versions(f"name='{ctx.model}'"):
        production = mv.current_stage == cfg.registry.production_stage
        if not production and str(mv.version) != champion:
            continue
        prefix = key_prefix(mv.source, cfg)
        problems = [d.as_dict() for d in verify_prefix(regions, prefix)]
        if not any(True for store in regions.values() for _ in store.list(prefix + "/")):
            problems.append({"key": prefix, "region": "*", "problem": "empty", "detail": "no object in any region"})
        if problems:
            out.append({"version": str(mv.version), "production": production, "problems": problems[:10]})
    return out


def client_ledger(state_home: Path) -> Path:
    """The ledger of direct clients on one host: their user's state directory (``ledger_path``)."""
    return state_home / "xregion" / "outbox.sqlite"


def stranded(ledger: Path) -> dict[str, list[str]]:
    """Work still owed in the direct clients' own ledger (no XREGION_HOME: their host's state
    directory, where no platform replicator looks), by full key: evidence for a post-mortem."""
    out: dict[str, list[str]] = {}
    if not ledger.exists():
        return out
    try:
        with sqlite3.connect(ledger) as conn:
            rows = conn.execute("select op, key, region, reason from owed").fetchall()
    except sqlite3.Error:  # a client was killed while it created the ledger: nothing owed in it
        return out
    for op, key, region, reason in rows:
        out.setdefault(key, []).append(f"the client host's ledger owes {op} to {region} ({reason})")
    return out


def log_mentions(home: Path, key: str, since: float, limit: int = 8) -> list[str]:
    """Lines of the replicators' and clients' logs (MLflow servers, the replicator service, the
    clients) that name ``key``: failed puts, corrupt copies, repairs, evidence of who touched it."""
    found, requests = [], []
    for log in sorted((home / "logs").glob("*.log")):
        if log.stat().st_mtime < since:
            continue
        if log.stem.endswith("-s3"):  # each region's access log: the order its store saw the requests in
            requests += _requests(log, key)
        elif log.stem.endswith(("mlflow", "replicator", "clients")):
            with open(log, errors="replace") as f:
                found += [f"{log.stem}: {line.strip()[:240]}" for line in f if key in line]
    return found[-limit:] + requests[-4 * limit :]


def _requests(log: Path, key: str) -> list[str]:
    """``time region-s3: METHOD [marker] status`` for each request on ``key`` (or its delete marker)."""
    out = []
    with open(log, errors="replace") as f:
        for line in f:
            if key not in line or '"' not in line:
                continue
            _, request, rest = re.sub(r"\x1b\[[0-9;]*m", "", line).split('"', 2)  # werkzeug colours
            method, path = (request.split() + ["", ""])[:2]
            marker = " marker" if "/_xregion/" in path else ""
            status = (rest.split() or [""])[0]
            out.append(f"{line[11:23]} {log.stem}: {method}{marker} {status}")
    return out
