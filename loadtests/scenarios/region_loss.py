"""region-loss and region-partition: the drills that prove the database survives the loss of a region: nobody runs a command.

``region-loss``       kill -9 everything of the primary's region at once (Patroni and its
                      Postgres, the etcd member, S3, the MLflow server, the model servers).
                      Patroni's leader lock expires in etcd, the synchronous standby is promoted,
                      MLflow servers elsewhere reconnect through the multi-host URI and read from
                      their own node meanwhile. Later the region's processes start again as after a
                      reboot: Patroni rewinds the old primary and it follows as a replica.
``region-partition``  the same region frozen (SIGSTOP), then thawed: after the thaw the old
                      primary must never acknowledge a write.

Measured, beyond the runner's figures (``summary["region"]``): detection (fault -> another node
holds the leader lock), promotion (-> it answers Patroni's GET /primary), the first write through a
surviving region, libpq's multi-host read-write check against Patroni's REST health check, the
registry writes' RPO (``rpo.registry``), writes the old primary accepted after it came back
(``split_brain``), the rejoin (method, seconds) and the resync of its bucket.
"""

from __future__ import annotations

import threading
import time

from ..region_probes import FailoverWatch, RegistryCanary, SplitBrainProbe, ensure_probe_table
from ..requestlog import read_requests, request_files
from .base import Ctx, DrillError, Scenario, services

# the database first: the fault's time (the first kill event) is when the primary was lost
COMPONENTS = ("patroni", "etcd", "mlflow", "s3", "serving")
BACK_ORDER = ("etcd", "s3", "patroni", "mlflow", "serving")


def _region(ctx: Ctx) -> str:
    return ctx.state["region"]


def prepare(ctx: Ctx) -> dict:
    """The region to lose is the primary's (Patroni's leader); start the watch and the registry canary."""
    from xregion.dr.nodes import view

    v = view(ctx.cfg)
    if v.leader is None:
        raise DrillError("no database leader: the cluster is not healthy enough to be measured (`xregion dr status`)")
    not_streaming = [m.name for m in v.members if m.name != v.leader and m.state != "streaming"]
    if not_streaming:
        raise DrillError(f"replica(s) {', '.join(not_streaming)} not streaming: restore them first")
    ctx.state["region"] = v.leader
    ctx.state["timeline"] = v.member(v.leader).timeline
    services(ctx, v.leader, COMPONENTS)  # every component must exist (serving: `xregion router start`)
    ensure_probe_table(ctx.cfg, ctx.home, v.leader)
    canary = RegistryCanary(ctx.cfg, f"xregion-drill-canary-{int(time.time())}")
    canary.create()
    canary.start()
    watch = FailoverWatch(ctx.cfg, ctx.home)
    watch.start()
    ctx.state.update(canary=canary, watch=watch)
    return {"region": v.leader, "sync_standbys": v.sync_standbys, "replication": v.replication}


def _fault(ctx: Ctx, action: str) -> list[str]:
    """The database node first, then the rest; the breakdown counts from the moment the node's
    processes have had the signal (``t_fault``), so no write the old primary acknowledged just
    before counts as a recovery."""
    svcs = services(ctx, _region(ctx), COMPONENTS)
    done = ctx.sup.fault(action, svcs[:1], ctx.progress)
    ctx.state["t_fault"] = time.time()
    return done + ctx.sup.fault(action, svcs[1:], ctx.progress)


def loss_inject(ctx: Ctx) -> dict:
    return {"killed": _fault(ctx, "kill")}


def partition_inject(ctx: Ctx) -> dict:
    return {"frozen": _fault(ctx, "freeze")}


def _start_probe(ctx: Ctx) -> None:
    """Direct writes to the old primary's port from the moment it comes back (in the background)."""
    probe = SplitBrainProbe(ctx.cfg, ctx.home, _region(ctx), window=25.0)
    ctx.state["probe"] = probe
    threading.Thread(target=probe.run, daemon=True, name="split-brain-probe").start()


def come_back(ctx: Ctx) -> dict:
    """The region's processes start again (thawed, or restarted as after a reboot); no DR command:
    Patroni finds another leader in etcd and makes its node follow it."""
    from xregion.dr.region import bring_back
    from xregion.store import RegionStore

    _start_probe(ctx)
    ctx.state["t_back"] = time.time()
    done = {}
    for svc in services(ctx, _region(ctx), BACK_ORDER):
        done[svc.name] = bring_back(ctx.sup, svc, ctx.progress)
        if svc.component == "s3" and done[svc.name] == "restarted":
            RegionStore(ctx.cfg.region(svc.region)).ensure_bucket()  # a restarted endpoint comes back empty
    return done


def _first_write(ctx: Ctx, t_fault: float) -> float | None:
    """Seconds from the fault to the first acknowledged scientist write that started after it."""
    reqs = read_requests(request_files(ctx.run_dir))
    ends = [r.end for r in reqs if r.kind == "tracking" and r.ok and r.ts >= t_fault]
    return round(min(ends) - t_fault, 3) if ends else None


def _rejoined(ctx: Ctx, timeout: float = 180.0) -> dict:
    from xregion.dr.failover import wait_role
    from xregion.dr.nodes import DRError

    t0 = time.time()
    try:
        v = wait_role(ctx.cfg, _region(ctx), ("replica", "sync_standby", "quorum_standby"), ("streaming",), timeout)
        m = v.member(_region(ctx))
        log = ctx.sup.log(f"{_region(ctx)}-patroni").read_text(errors="replace")
        since = log[log.rfind("--- ") :] if "--- " in log else log
        method = "pg_rewind" if "pg_rewind exit code=0" in since else "follow"
        return {
            "streaming": True,
            "leader": v.leader,
            "timeline": m.timeline,
            "method": method,
            "waited_s": round(time.time() - t0, 3),
        }
    except DRError as err:
        return {"streaming": False, "error": str(err)}


def finish(ctx: Ctx) -> dict:
    """Stop the watchers; wait for the rejoin; resync the bucket; read registry writes back; report."""
    from xregion.dr.region import resync_all

    canary, watch = ctx.state.pop("canary"), ctx.state.pop("watch")
    canary.stop.set()
    canary.join(timeout=30)
    t_fault = ctx.state.get("t_fault")
    rejoin = _rejoined(ctx)
    watch.close()
    probe = ctx.state.pop("probe", None)
    split = probe.result() if probe else {"attempts": 0, "accepted": None}
    resync = resync_all(ctx.cfg)
    if ctx.cfg.witness:  # leave etcd as `xregion up` makes it (its leader on the witness)
        from xregion.infra.embedded import etcd

        etcd.prefer_leader(ctx.cfg, ctx.cfg.witness.name)
    registry = canary.read_back()
    canary.delete()
    region = {"lost": _region(ctx), "rejoin": rejoin, "resync": resync}
    if t_fault:
        b = watch.breakdown(t_fault, _region(ctx))
        first = _first_write(ctx, t_fault)
        reg_first = min((acked for _, sent, acked, _ in canary.acks if sent >= t_fault), default=None)
        b.update(
            first_write_s=first,
            first_registry_write_s=round(reg_first - t_fault, 3) if reg_first else None,
            promotion_s=_diff(b["rest_primary_s"], b["detection_s"]),
            reconnect_s=_diff(first, b["rest_primary_s"]),
            libpq_minus_rest_s=_diff(b["libpq_read_write_s"], b["rest_primary_s"]),
        )
        region["failover"] = b
    ctx.state["rpo"] = {"registry": registry}
    ctx.state["summary"] = {"region": region, "split_brain": split}
    return {"rejoin": rejoin, "split_brain": split, "registry_rpo": registry, "resync": resync}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


REGION_SCENARIOS: dict[str, Scenario] = {
    "region-loss": Scenario(
        "region-loss",
        "kill -9 everything of the primary's region at once (Patroni + Postgres, etcd member, S3, MLflow, "
        "model servers); nobody runs a command; later its processes start again and Patroni rejoins it",
        gate="tracking",
        scientists=2,
        readers=2,
        fault_label="kill -9 the primary's region (patroni, etcd, mlflow, s3, serving)",
        restore_label="region's processes start again (Patroni rejoins it as a replica)",
        prepare=prepare,
        inject=loss_inject,
        restore=come_back,
        finish=finish,
        rpo=True,
    ),
    "region-partition": Scenario(
        "region-partition",
        "SIGSTOP everything of the primary's region (it holds its connections and answers nothing), SIGCONT "
        "later: the old primary must never acknowledge a write after the thaw",
        gate="tracking",
        scientists=2,
        readers=2,
        fault_label="SIGSTOP the primary's region",
        restore_label="SIGCONT (thaw) the region",
        prepare=prepare,
        inject=partition_inject,
        restore=come_back,
        finish=finish,
        rpo=True,
    ),
}
