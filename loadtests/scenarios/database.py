"""db-primary-loss: the Postgres primary killed and the standby promoted."""

from __future__ import annotations

from .base import Ctx, DrillError, Scenario, primary_region, services


def db_prepare(ctx: Ctx) -> dict:
    primary = primary_region(ctx)
    if primary != ctx.cfg.primary.name:
        raise DrillError(
            f"the database primary is {primary}, not {ctx.cfg.primary.name} as the regions file says; "
            f"switch back first (`xregion dr switchover --to {ctx.cfg.primary.name}`)"
        )
    ctx.state["old_primary"] = primary
    ctx.state["target"] = next(r.name for r in ctx.cfg.regions if r.name != primary)
    return {"primary": primary, "failover_to": ctx.state["target"]}


def db_inject(ctx: Ctx) -> dict:
    from xregion.dr import failover as fo

    old, target = ctx.state["old_primary"], ctx.state["target"]
    killed = ctx.sup.fault("kill", services(ctx, old, ("postgres",)), ctx.progress)
    res = fo.failover(ctx.cfg, ctx.home, target, progress=ctx.progress)
    return {
        "killed": killed,
        "failover": {
            k: res[k]
            for k in ("from", "to", "rto_seconds", "database_writable_seconds", "command_seconds", "lag", "ok")
        },
    }


def db_finish(ctx: Ctx) -> dict:
    """Rejoin the old primary as a standby, then switch back (zero loss) to the topology of the regions file."""
    from xregion.dr import failover as fo

    old = ctx.state["old_primary"]
    out = {"rejoin": fo.rejoin(ctx.cfg, ctx.home, old, progress=ctx.progress)}
    sw = fo.switchover(ctx.cfg, ctx.home, old, progress=ctx.progress)
    out["switchover"] = {k: sw[k] for k in ("from", "to", "write_downtime_seconds", "ok")}
    return out


DB_PRIMARY_LOSS = Scenario(
    "db-primary-loss",
    "kill -9 the Postgres primary and fail over to the standby (xregion dr failover); "
    "afterwards rejoin the old primary and switch back",
    gate="tracking",
    scientists=3,
    fault_label="kill -9 a-postgres + dr failover",
    prepare=db_prepare,
    inject=db_inject,
    finish=db_finish,
    rpo=True,
)
