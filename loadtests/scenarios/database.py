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
    """kill -9 the primary's database node (Patroni and its Postgres); Patroni fails over on its own."""
    old = ctx.state["old_primary"]
    return {"killed": ctx.sup.fault("kill", services(ctx, old, ("patroni",)), ctx.progress)}


def db_finish(ctx: Ctx) -> dict:
    """Rejoin the old primary as a replica (Patroni), then switch back (zero loss) to the regions file's topology."""
    from xregion.dr import failover as fo

    old = ctx.state["old_primary"]
    out = {"rejoin": fo.rejoin(ctx.cfg, ctx.home, old, progress=ctx.progress).to_dict()}
    if primary_region(ctx) != old:
        sw = fo.switchover(ctx.cfg, ctx.home, old, progress=ctx.progress).to_dict()
        out["switchover"] = {k: sw[k] for k in ("from", "to", "command_seconds", "rto_seconds", "ok")}
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
