"""``xregion region restore R``: one command that brings a lost (or frozen) region back.

In order, each step reported:

1. the region's etcd member (and the witness's, if R is the witness): thawed or restarted; it
   rejoins the etcd cluster with its own data;
2. its S3 endpoint, and its bucket re-created when the endpoint came back empty;
3. its database node: Patroni's own rejoin (``dr.failover.rejoin``: started, rewound onto the
   leader's timeline with pg_rewind, or copied afresh when that is impossible); it comes back a
   replica, never a primary;
4. its MLflow server;
5. its model servers (``fault restart``; the router's hooks are ``xregion.infra.serving.router``,
   which keeps its own watch on health);
6. ``replicate resync``: every object the region's bucket lacks is copied from a good region.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xregion import events
from xregion.config import XRegionConfig
from xregion.infra.embedded import etcd, stack
from xregion.infra.embedded.supervisor import Service, Supervisor, SupervisorError
from xregion.store import RegionStore

from .failover import rejoin
from .nodes import DRError

Progress = Callable[[str], None]
ORDER = ("etcd", "s3", "patroni", "mlflow", "serving")


@dataclass
class RegionRestoreResult:
    region: str
    services: dict[str, str] = field(default_factory=dict)  # service -> what was done
    database: dict | None = None  # the rejoin result
    resync: dict | None = None
    seconds: float = 0.0
    ok: bool = True
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _quiet(_m: str) -> None:
    pass


def bring_back(sup: Supervisor, svc: Service, progress: Progress) -> str:
    """Thaw a frozen service, restart a dead or stopped one, leave a running one alone."""
    state = sup.state(svc.name)
    if state == "running":
        return "already running"
    if state == "frozen":
        sup.fault("thaw", [svc], progress)
        return "thawed"
    sup.fault("restart", [svc], progress)  # recorded in the event log like any fault action
    return "restarted"


def resync_all(cfg: XRegionConfig) -> dict:
    """``xregion replicate resync``: repair every bucket from good copies (idempotent)."""
    from xregion.plugins.replication import Replicator
    from xregion.plugins.verify import resync

    rep = Replicator(cfg)
    try:
        return resync(rep).summary()
    finally:
        rep.close()


def _services(cfg: XRegionConfig, home: Path, sup: Supervisor, region: str) -> list[Service]:
    try:
        pool = stack.select(cfg, home, sup, region, None)
    except SupervisorError as err:  # an unknown region or component
        raise DRError(str(err)) from None
    return sorted(pool, key=lambda s: (ORDER.index(s.component) if s.component in ORDER else len(ORDER), s.name))


def _restore_one(cfg: XRegionConfig, home: Path, svc: Service, res: RegionRestoreResult, progress: Progress) -> None:
    sup = Supervisor(home)
    if svc.component == "patroni":
        rj = rejoin(cfg, home, svc.region, progress=progress)  # starts it if needed; never a second primary
        res.database = rj.to_dict()
        res.services[svc.name] = f"rejoined ({rj.method})"
        return
    if svc.component == "serving" and sup.state(svc.name) == "running":
        res.services[svc.name] = "already running"
        return
    res.services[svc.name] = bring_back(sup, svc, progress)
    if svc.component == "s3":
        store = RegionStore(cfg.region(svc.region))
        store.ensure_bucket()  # an endpoint that lost its data comes back without its bucket


def restore_region(cfg: XRegionConfig, home: Path, region: str, progress: Progress = _quiet) -> RegionRestoreResult:
    t0 = time.time()
    sup = Supervisor(home)
    res = RegionRestoreResult(region=region)
    for svc in _services(cfg, home, sup, region):
        progress(f"{svc.name}: {sup.state(svc.name)}")
        try:
            _restore_one(cfg, home, svc, res, progress)
        except (SupervisorError, DRError) as err:
            res.ok = False
            res.problems.append(f"{svc.name}: {str(err).splitlines()[0]}")
            progress(f"[red]{svc.name}: {err}[/red]")
    if cfg.witness:
        progress(f"etcd leader: {etcd.prefer_leader(cfg, cfg.witness.name)} (kept on the witness)")
    if region in cfg.by_name:
        progress("replicate resync: every object the region lacks, from a good copy")
        res.resync = resync_all(cfg)
        if res.resync["still_owed"] or res.resync["unrepairable"]:
            res.ok = False
            res.problems.append(
                f"resync left {res.resync['still_owed']} owed, {res.resync['unrepairable']} unrepairable"
            )
    res.seconds = round(time.time() - t0, 3)
    events.record("region.restore", home, **{k: v for k, v in res.to_dict().items() if k != "database"})
    return res
