"""model-server-crash and freeze: one region's model server killed (-9) or frozen (SIGSTOP)."""

from __future__ import annotations

from .base import Ctx, Scenario, bring_back, services


def crash_inject(ctx: Ctx) -> dict:
    return {"killed": ctx.sup.fault("kill", services(ctx, ctx.cfg.primary.name, ("serving",)), ctx.progress)}


def freeze_inject(ctx: Ctx) -> dict:
    return {"frozen": ctx.sup.fault("freeze", services(ctx, ctx.cfg.primary.name, ("serving",)), ctx.progress)}


def serving_restore(ctx: Ctx) -> dict:
    return bring_back(ctx, services(ctx, ctx.cfg.primary.name, ("serving",)))


MODEL_SERVER_CRASH = Scenario(
    "model-server-crash",
    "kill -9 region a's model server; restart it later if nothing did",
    gate="serving",
    scientists=0,
    fault_label="kill -9 a-serving",
    restore_label="restart a-serving",
    inject=crash_inject,
    restore=serving_restore,
    finish=serving_restore,
)

FREEZE = Scenario(
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
)
