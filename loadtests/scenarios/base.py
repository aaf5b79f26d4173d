"""What every drill scenario is made of: the context, the hooks, and the helpers they share.

A scenario says what it does to the platform, when to the platform, when, and how it leaves it healthy again.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.errors import XRegionError

BAD_MODEL_TAG = "xregion.drill"  # = "bad-model" on the version registered by bad-model-promotion


class DrillError(XRegionError, RuntimeError):
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
    # when the fault reached the clients, if not when the fault step ran (events since the step, the step)
    fault_time: Callable[[Ctx, list[dict], dict], tuple[float | None, dict]] | None = None


# --- helpers -----------------------------------------------------------------------------------


def services(ctx: Ctx, region: str, components: tuple[str, ...]) -> list:
    """The region's services of these components, in the given component order."""
    from xregion.infra.embedded import stack
    from xregion.infra.embedded.supervisor import SupervisorError

    try:
        pool = stack.select(ctx.cfg, ctx.home, ctx.sup, region, None)
    except SupervisorError as err:
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


def bring_back(ctx: Ctx, svcs: list) -> dict:
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
    """Repair every region's bucket from good copies (``xregion replicate resync``, as a region restore runs it)."""
    from xregion.dr.region import resync_all

    return resync_all(ctx.cfg)


def primary_region(ctx: Ctx) -> str:
    from xregion.dr.nodes import current_primary

    return current_primary(ctx.cfg)  # Patroni's leader
