"""bad-model-promotion: a version that fails every prediction is promoted; the router must roll it back."""

from __future__ import annotations

import time
from pathlib import Path

from xregion import events

from .base import BAD_MODEL_TAG, Ctx, DrillError, Scenario


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
            python_model=str(Path(__file__).parent.parent / "bad_model.py"),
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
        for e in events.read(ctx.home, kind="serving.rollback", since=ctx.state.get("promoted_ts", 0))
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


def bad_fault_time(ctx: Ctx, evs: list[dict], step: dict) -> tuple[float | None, dict]:
    """The fault reaches the clients when the router switches traffic to the bad version, not when
    the registry is changed (the new servers take a while to start), if it ever does."""
    bad = str(ctx.state.get("bad"))
    switches = [
        e["ts"]
        for e in evs
        if e["kind"] == "serving.switch" and str(e.get("to_version")) == bad and e["ts"] >= step["ts_start"]
    ]
    fault = switches[0] if switches else step["ts_end"]
    rollbacks = [
        e["ts"]
        for e in evs
        if e["kind"] == "serving.rollback" and str(e.get("from_version")) == bad and e["ts"] >= fault
    ]
    return fault, {
        "promoted_ts": step["ts_end"],
        "switched_to_bad": bool(switches),
        "rollback_after_switch_s": round(rollbacks[0] - fault, 3) if rollbacks else None,
    }


BAD_MODEL_PROMOTION = Scenario(
    "bad-model-promotion",
    "promote a model version that fails every prediction; the control plane "
    "should roll it back (if it does not, the drill rolls back by hand afterwards)",
    gate="serving",
    scientists=0,
    fault_label="promote a failing model version",
    prepare=bad_prepare,
    inject=bad_inject,
    finish=bad_finish,
    fault_time=bad_fault_time,
)
