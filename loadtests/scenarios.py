"""Drill scenarios: what each one does to the platform, when, and how it leaves it healthy again.

Every fault goes through the Supervisor (``Supervisor.fault``), which records it in the event log;
the database failover goes through ``xregion.dr``; promotions through the gated registry
(``xregion.plugins.registry_client``). A scenario has

* ``inject`` at ``fault_at`` seconds after the load started (the fault; its time is ``t_f``),
* ``restore`` at ``restore_at`` (bringing the region back: ends the fault phase), optional,
* ``finish`` after the load (repairs that are not part of the measurement: resync of a wiped S3
  endpoint, rejoin and switch back of the database, a manual rollback if nothing rolled back),
  so that the stack is as healthy as before,
* ``gate``: the traffic whose availability and RTO the objectives judge (``serving`` for the
  front door, ``tracking`` for the scientists' writes), and the default persona mix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xregion import events
from xregion.config import XRegionConfig

BAD_MODEL_TAG = "xregion.drill"  # = "bad-model" on the version registered by bad-model-promotion


class DrillError(RuntimeError):
    """The drill cannot run (the platform is not in a state to be measured); the message says why."""


@dataclass
class Ctx:
    cfg: XRegionConfig
    home: Path
    sup: object  # xregion.infra.embedded.supervisor.Supervisor
    progress: Callable[[str], None]
    run_dir: Path
    state: dict = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    description: str
    gate: str  # serving | tracking
    scientists: int  # default fixed number of ScientistUser
    release_managers: int = 0
    fault_label: str = ""
    restore_label: str = ""
    prepare: Callable[[Ctx], dict] | None = None
    inject: Callable[[Ctx], dict] | None = None
    restore: Callable[[Ctx], dict] | None = None
    finish: Callable[[Ctx], dict] | None = None
    rpo: bool = False  # read acknowledged writes back afterwards
    readers: int = 0  # default fixed number of ReaderUser (MLflow reads, traffic kind "reads")


# --- helpers -----------------------------------------------------------------------------------


def services(ctx: Ctx, region: str, components: tuple[str, ...]) -> list:
    """The region's services of these components, in the given component order."""
    from xregion.infra.embedded import stack

    try:
        pool = stack.select(ctx.cfg, ctx.home, ctx.sup, region, None)
    except SystemExit as err:
        raise DrillError(str(err)) from None
    found = {s.component: [] for s in pool}
    for s in pool:
        found[s.component].append(s)
    missing = [c for c in components if c not in found]
    if missing:
        raise DrillError(
            f"region {region} has no {', '.join(missing)} service (have: {', '.join(sorted(found))}); "
            f"start serving first (`xregion router start`)"
            if "serving" in missing
            else f"region {region} has no {', '.join(missing)} service"
        )
    return [s for c in components for s in found[c]]


def _bring_back(ctx: Ctx, svcs: list) -> dict:
    """Restart every service that is not running (thaw a frozen one); leave running ones alone
    (the control plane may have restarted a model server already)."""
    done = {}
    for svc in svcs:
        state = ctx.sup.state(svc.name)
        if state == "running":
            done[svc.name] = "already running"
            continue
        if state == "frozen":
            ctx.sup.fault("thaw", [svc], ctx.progress)
            done[svc.name] = "thawed"
            continue
        ctx.sup.fault("restart", [svc], ctx.progress)
        done[svc.name] = "restarted"
        if svc.component == "s3":  # a restarted (moto) endpoint comes back empty: no bucket at all
            from xregion.store import RegionStore

            RegionStore(ctx.cfg.region(svc.region)).ensure_bucket()
            done[svc.name] += ", bucket re-created"
    return done


def resync(ctx: Ctx) -> dict:
    """Repair every region's bucket from good copies (a killed moto S3 endpoint comes back empty)."""
    from xregion.plugins.replication import Replicator
    from xregion.plugins.verify import resync as run_resync

    rep = Replicator(ctx.cfg)
    try:
        res = run_resync(rep)
    finally:
        pool = getattr(rep, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
    return {k: res[k] for k in ("objects", "differences", "repaired", "still_owed")} | {
        "unreachable": res["unreachable"],
        "unrepairable": len(res["unrepairable"]),
    }


def _primary_region(ctx: Ctx) -> str:
    from xregion.dr.nodes import current_primary

    return current_primary(ctx.cfg)  # Patroni's leader


# --- region-outage -----------------------------------------------------------------------------

REGION_COMPONENTS = ("serving", "mlflow", "s3")


def _outage_region(ctx: Ctx) -> str:
    return ctx.state.get("region") or ctx.cfg.primary.name


def outage_inject(ctx: Ctx) -> dict:
    region = _outage_region(ctx)
    svcs = services(ctx, region, REGION_COMPONENTS)
    return {"killed": ctx.sup.fault("kill", svcs, ctx.progress)}


def outage_restore(ctx: Ctx) -> dict:
    region = _outage_region(ctx)
    return _bring_back(ctx, services(ctx, region, tuple(reversed(REGION_COMPONENTS))))


def outage_finish(ctx: Ctx) -> dict:
    region = _outage_region(ctx)
    out = {"brought_back": _bring_back(ctx, services(ctx, region, tuple(reversed(REGION_COMPONENTS))))}
    out["resync"] = resync(ctx)
    return out


# --- model-server-crash / freeze ---------------------------------------------------------------


def crash_inject(ctx: Ctx) -> dict:
    return {"killed": ctx.sup.fault("kill", services(ctx, ctx.cfg.primary.name, ("serving",)), ctx.progress)}


def freeze_inject(ctx: Ctx) -> dict:
    return {"frozen": ctx.sup.fault("freeze", services(ctx, ctx.cfg.primary.name, ("serving",)), ctx.progress)}


def serving_restore(ctx: Ctx) -> dict:
    return _bring_back(ctx, services(ctx, ctx.cfg.primary.name, ("serving",)))


# --- db-primary-loss ---------------------------------------------------------------------------


def db_prepare(ctx: Ctx) -> dict:
    primary = _primary_region(ctx)
    if primary != ctx.cfg.primary.name:
        raise DrillError(
            f"the database primary is {primary}, not {ctx.cfg.primary.name} as the regions file says; "
            f"switch back first (`xregion dr switchover --to {ctx.cfg.primary.name}`)"
        )
    ctx.state["old_primary"] = primary
    ctx.state["target"] = next(r.name for r in ctx.cfg.regions if r.name != primary)
    return {"primary": primary, "failover_to": ctx.state["target"]}


def db_inject(ctx: Ctx) -> dict:
    """kill -9 the primary's database node (Patroni and its Postgres); Patroni fails over on its own."""
    old = ctx.state["old_primary"]
    return {"killed": ctx.sup.fault("kill", services(ctx, old, ("patroni",)), ctx.progress)}


def db_finish(ctx: Ctx) -> dict:
    """Rejoin the old primary as a replica (Patroni), then switch back (zero loss) to the regions file's topology."""
    from xregion.dr import failover as fo

    old = ctx.state["old_primary"]
    out = {"rejoin": fo.rejoin(ctx.cfg, ctx.home, old, progress=ctx.progress).to_dict()}
    if _primary_region(ctx) != old:
        sw = fo.switchover(ctx.cfg, ctx.home, old, progress=ctx.progress).to_dict()
        out["switchover"] = {k: sw[k] for k in ("from", "to", "command_seconds", "rto_seconds", "ok")}
    return out


# --- bad-model-promotion -----------------------------------------------------------------------


def _registry(ctx: Ctx):
    from xregion.plugins import registry_client

    return registry_client, registry_client.client(ctx.cfg, ctx.cfg.primary.mlflow_url)


def bad_version(ctx: Ctx) -> str:
    """A registered version of the served model that loads but fails every prediction
    (``loadtests/bad_model.py``); registered once and reused by later drills."""
    import mlflow
    import pandas as pd

    reg, cl = _registry(ctx)
    name = ctx.cfg.registry.model_name
    for mv in cl.search_model_versions(f"name='{name}'"):
        if mv.tags.get(BAD_MODEL_TAG) == "bad-model":
            return str(mv.version)
    ctx.progress(f"registering a model version of {name} that fails on predict")
    mlflow.set_tracking_uri(ctx.cfg.primary.mlflow_url)
    mlflow.set_registry_uri(ctx.cfg.primary.mlflow_url)
    mlflow.set_experiment("drills")
    with mlflow.start_run(run_name="bad-model-for-drills"):
        # like every release of the recommender, it carries an input example
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("bad_model.py")),
            registered_model_name=name,
            pip_requirements=["mlflow"],
            input_example=pd.DataFrame({"user_id": [1], "k": [10]}),
        )
    version = str(info.registered_model_version)
    cl.set_model_version_tag(name, version, BAD_MODEL_TAG, "bad-model")
    return version


def good_versions(ctx: Ctx) -> list[str]:
    """The current production version first, then the other versions not marked bad, newest first."""
    reg, cl = _registry(ctx)
    name = ctx.cfg.registry.model_name
    current = reg.production_version(cl, ctx.cfg, name)
    if current is None:
        raise DrillError(f"{name} has no production version; train and promote one first")
    if current.tags.get(BAD_MODEL_TAG) == "bad-model":
        raise DrillError(
            f"{name} version {current.version} in production is the drills' bad model; "
            f"roll back first (`xregion rollback {name}`)"
        )
    others = sorted(
        (
            str(mv.version)
            for mv in cl.search_model_versions(f"name='{name}'")
            if mv.tags.get(BAD_MODEL_TAG) != "bad-model" and str(mv.version) != str(current.version)
        ),
        key=int,
        reverse=True,
    )
    return [str(current.version)] + others


def bad_prepare(ctx: Ctx) -> dict:
    ctx.state["good"] = good_versions(ctx)[0]
    ctx.state["bad"] = bad_version(ctx)
    return {"production": ctx.state["good"], "bad_version": ctx.state["bad"]}


def bad_inject(ctx: Ctx) -> dict:
    reg, cl = _registry(ctx)
    name, bad = ctx.cfg.registry.model_name, ctx.state["bad"]
    done = reg.promote(cl, ctx.cfg, name, bad, reason="drill bad-model-promotion", who="xregion-drill")
    ctx.state["promoted_ts"] = time.time()
    events.record("drill.fault", ctx.home, action="promote", model=name, version=bad)
    return {"promoted": done}


def bad_finish(ctx: Ctx) -> dict:
    reg, cl = _registry(ctx)
    name = ctx.cfg.registry.model_name
    rollbacks = [
        e
        for e in events.read(ctx.home, kind="rollback", since=ctx.state.get("promoted_ts", 0))
        if str(e.get("from_version")) == str(ctx.state["bad"])
    ]
    current = reg.production_version(cl, ctx.cfg, name)
    out = {
        "rolled_back_automatically": bool(rollbacks),
        "rollback_after_s": round(rollbacks[0]["ts"] - ctx.state["promoted_ts"], 3) if rollbacks else None,
        "rollback_source": rollbacks[0].get("source") if rollbacks else None,
    }
    if current is not None and str(current.version) == str(ctx.state["bad"]):
        ctx.progress(f"{name} {ctx.state['bad']} is still in production: rolling back by hand")
        out["manual_rollback"] = reg.rollback(
            cl,
            ctx.cfg,
            name,
            reason="drill: bad model left in production",
            to_version=ctx.state["good"],
            who="xregion-drill",
            source="drill",
        )
    return out


# --- the table -----------------------------------------------------------------------------------

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "baseline",
            "no fault: the steady state of every persona, release managers included",
            gate="serving",
            scientists=1,
            release_managers=1,
        ),
        Scenario(
            "region-outage",
            "kill -9 region a's S3 endpoint, MLflow server and model server; restart them later "
            "(its Postgres primary is left to db-primary-loss); resync its bucket afterwards",
            gate="serving",
            scientists=1,
            fault_label="kill -9 region a (s3, mlflow, serving)",
            restore_label="restart region a",
            inject=outage_inject,
            restore=outage_restore,
            finish=outage_finish,
            rpo=True,
        ),
        Scenario(
            "model-server-crash",
            "kill -9 region a's model server; restart it later if nothing did",
            gate="serving",
            scientists=0,
            fault_label="kill -9 a-serving",
            restore_label="restart a-serving",
            inject=crash_inject,
            restore=serving_restore,
            finish=serving_restore,
        ),
        Scenario(
            "freeze",
            "SIGSTOP region a's model server (it accepts connections and never answers: the "
            "partition-like case); SIGCONT later",
            gate="serving",
            scientists=0,
            fault_label="SIGSTOP a-serving",
            restore_label="SIGCONT a-serving",
            inject=freeze_inject,
            restore=serving_restore,
            finish=serving_restore,
        ),
        Scenario(
            "db-primary-loss",
            "kill -9 the database primary's node (Patroni and Postgres); Patroni promotes the standby "
            "with no command; afterwards the old primary rejoins and the drill switches back",
            gate="tracking",
            scientists=3,
            fault_label="kill -9 a-patroni (Patroni + Postgres)",
            prepare=db_prepare,
            inject=db_inject,
            finish=db_finish,
            rpo=True,
        ),
        Scenario(
            "bad-model-promotion",
            "promote a model version that fails every prediction; the control plane "
            "should roll it back (if it does not, the drill rolls back by hand afterwards)",
            gate="serving",
            scientists=0,
            fault_label="promote a failing model version",
            prepare=bad_prepare,
            inject=bad_inject,
            finish=bad_finish,
        ),
    ]
}
from .scenarios_region import REGION_SCENARIOS  # noqa: E402 - region-loss, region-partition (loadtests/scenarios_region.py)

SCENARIOS.update(REGION_SCENARIOS)
