"""region-outage: region a's S3 endpoint, MLflow server and model server killed, restarted later."""

from __future__ import annotations

from .base import Ctx, Scenario, bring_back, resync, services

REGION_COMPONENTS = ("serving", "mlflow", "s3")


def _outage_region(ctx: Ctx) -> str:
    return ctx.state.get("region") or ctx.cfg.primary.name


def outage_inject(ctx: Ctx) -> dict:
    region = _outage_region(ctx)
    svcs = services(ctx, region, REGION_COMPONENTS)
    return {"killed": ctx.sup.fault("kill", svcs, ctx.progress)}


def outage_restore(ctx: Ctx) -> dict:
    region = _outage_region(ctx)
    return bring_back(ctx, services(ctx, region, tuple(reversed(REGION_COMPONENTS))))


def outage_finish(ctx: Ctx) -> dict:
    region = _outage_region(ctx)
    out = {"brought_back": bring_back(ctx, services(ctx, region, tuple(reversed(REGION_COMPONENTS))))}
    out["resync"] = resync(ctx)
    return out


REGION_OUTAGE = Scenario(
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
)
