"""Start, stop and inspect serving on the embedded platform: model servers, HAProxy and the router.

``start_serving`` starts, as Supervisor services, a model server per region for a version the
gate has let into production, HAProxy in front of them (the global front door, region
``global``: losing a region does not take it along) and the router that follows the registry.
It is idempotent: run again, it starts whatever of that is missing (a killed HAProxy comes back
with the router's current state) and never serves a version that is not in production.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from xregion import events
from xregion.config import XRegionConfig
from xregion.infra.embedded import auth
from xregion.infra.embedded.stack import BIN, child_env
from xregion.infra.embedded.supervisor import Service, StartFailed, Supervisor, SupervisorError, check_health
from xregion.net import free_port, host_port
from xregion.secrets import secret, secret_path

from . import haproxy
from .haproxy import SLOTS, RuntimeAPI, RuntimeAPIError, Tuning, int0
from .servers import GLOBAL, serving_service
from .state import Policy, RouterState, Server, Slot, load_state, save_state, state_path

log = logging.getLogger(__name__)
TOKEN = "router-token"  # the router API's bearer token (XREGION_HOME/secrets, 0600)
STATS_PASSWORD = "haproxy-stats"


class ServingError(SupervisorError):
    """Serving cannot start or change as asked; the message says why and what to do."""


def haproxy_service(cfg: XRegionConfig, home: Path) -> Service:
    host, port = host_port(cfg.serving.frontend_url)
    secret(home, STATS_PASSWORD)
    return Service(
        name="haproxy",
        region=GLOBAL,
        component="haproxy",
        argv=[haproxy.binary(), "-W", "-db", "-f", str(haproxy.paths(home)["cfg"])],
        listen=(host, port),
        health={"type": "http", "url": f"{cfg.serving.frontend_url}{haproxy.MONITOR_URI}"},
        secret_env={haproxy.STATS_PASSWORD_ENV: f"file:{secret_path(home, STATS_PASSWORD)}"},
        cwd=str(home),
        start_timeout=30,
        stop_signal=15,
    )


def router_service(cfg: XRegionConfig, home: Path, port: int) -> Service:
    env = {
        **child_env(cfg, cfg.primary, home),
        # a dead region's MLflow server costs the router seconds, not MLflow's minutes of back-off
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    env.pop("XREGION_LOCAL_REGION", None)
    account, password = auth.service_env(home, "router", cfg)  # MANAGE on the model: it rolls back
    env.update(account)
    return Service(
        name="router",
        region=GLOBAL,
        component="router",
        argv=[str(BIN / "xregion"), "router", "run"],
        listen=("127.0.0.1", port),
        health={"type": "http", "url": f"http://127.0.0.1:{port}/healthz"},
        env=env,
        secret_env=password,
        cwd=str(home),
        start_timeout=60,
    )


def render_front_door(cfg: XRegionConfig, home: Path, state: RouterState) -> Path:
    """HAProxy's configuration from the router state: a restarted HAProxy comes back as it was."""
    fd = haproxy.embedded_front_door(
        host_port(cfg.serving.frontend_url),
        host_port(cfg.serving.haproxy_stats_url),
        home,
        state.haproxy_servers(),
        state.active,
        state.tuning,
    )
    path = haproxy.write(fd, [r.name for r in cfg.regions], haproxy.paths(home)["cfg"])
    return path


def wait_servers_up(api: RuntimeAPI, backend: str, servers: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = {r["svname"]: r["status"] for r in api.stats() if r["pxname"] == backend}
        if all(status.get(s) == "UP" for s in servers):
            return
        time.sleep(0.1)
    raise StartFailed(f"HAProxy does not see {backend} servers {servers} UP after {timeout:.0f}s: {status}")


def _new_state(
    cfg: XRegionConfig, model: str, version: str, names: list[str], policy: Policy, tuning: Tuning
) -> RouterState:
    servers = {r: Server(f"{r}-serving", *host_port(cfg.region(r).serving_url)) for r in names}
    return RouterState(
        model=model,
        regions=names,
        active="bk_blue",
        slots={"bk_blue": Slot(version, servers), "bk_green": None},
        policy=policy,
        tuning=tuning,
        api_port=free_port(),
    )


def external_state(cfg: XRegionConfig, home: Path, regions: list[str], api_port: int) -> RouterState:
    """The router state of a deployment whose model servers are the platform's (compose, Kubernetes):
    on first start, the production version on blue in every region; afterwards what the state file
    (on the router's volume) says."""
    from xregion.plugins.registry_client import on_any_region, production_version

    from .servers import ExternalServers

    state = load_state(home)
    if state is not None:
        return state
    model = cfg.registry.model_name
    mv = on_any_region(cfg, lambda cl: production_version(cl, cfg, model))
    if mv is None:
        raise ServingError(f"no version of {model} is in production yet: promote one (xregion promote {model} VERSION)")
    servers = ExternalServers(cfg, 0).plan("bk_blue", str(mv.version), regions, {}, time.time()).servers
    state = RouterState(
        model=model,
        regions=regions,
        active="bk_blue",
        slots={"bk_blue": Slot(str(mv.version), servers), "bk_green": None},
        mode="external",
        policy=Policy.from_env(),
        tuning=Tuning.from_env(),
        api_port=api_port,
    )
    save_state(home, state)
    return state


def start_serving(
    cfg: XRegionConfig,
    home: Path,
    progress=log.info,
    regions: list[str] | None = None,
    *,
    policy: Policy | None = None,
    tuning: Tuning | None = None,
    model: str | None = None,
) -> RouterState:
    """Serve the production version in every region (or ``regions``), or bring back whatever part of a
    running serving stack is missing. Waits until traffic flows through HAProxy."""
    from xregion.plugins.registry_client import on_any_region, production_version

    home = Path(home)
    sup = Supervisor(home)
    state = load_state(home)
    if state is None:
        model = model or cfg.registry.model_name
        mv = on_any_region(cfg, lambda cl: production_version(cl, cfg, model))
        if mv is None:
            raise ServingError(
                f"no version of {model} holds @{cfg.registry.production_alias} or is in "
                f"{cfg.registry.production_stage}: promote one first (xregion promote {model} VERSION)"
            )
        names = [cfg.region(r).name for r in (regions or [r.name for r in cfg.regions])]
        state = _new_state(cfg, model, str(mv.version), names, policy or Policy.from_env(), tuning or Tuning.from_env())
        save_state(home, state)
    secret(home, TOKEN)
    active = state.serving()
    svcs = [
        serving_service(
            cfg,
            r,
            home,
            state.model,
            active.version,
            s.port,
            name=s.service,
            start_timeout=state.policy.start_timeout_s,
        )
        for r, s in active.servers.items()
    ]
    progress(f"model servers for {state.model} version {active.version} in region(s) {', '.join(active.servers)}")
    for s in svcs:
        sup.spawn(s)
    sup.wait_healthy(svcs, progress)
    haproxy.check_config(render_front_door(cfg, home, state))
    progress("HAProxy (the front door)")
    sup.start(haproxy_service(cfg, home), progress=progress)
    wait_servers_up(RuntimeAPI(str(haproxy.paths(home)["socket"])), state.active, list(active.servers), timeout=60)
    progress("the router")
    sup.start(router_service(cfg, home, state.api_port), progress=progress)
    events.record(
        "serving.started",
        home,
        model=state.model,
        version=active.version,
        regions=list(active.servers),
        frontend=cfg.serving.frontend_url,
    )
    return state


def stop_serving(home: Path, progress=None) -> list[str]:
    """Stop the router, HAProxy and every model server (by pid); the event log stays."""
    sup = Supervisor(Path(home))
    stopped = []
    order = {"router": 0, "haproxy": 1, "serving": 2}
    for svc in sorted((s for s in sup.known() if s.component in order), key=lambda s: (order[s.component], s.name)):
        sup.stop(svc.name)
        stopped.append(svc.name)
        if progress:
            progress(f"stopped {svc.name}")
    state_path(home).unlink(missing_ok=True)
    return stopped


def _haproxy_view(home: Path) -> tuple[str | None, list[dict], str | None]:
    try:
        api = RuntimeAPI(str(haproxy.paths(home)["socket"]))
        rows = [
            {
                "backend": r["pxname"],
                "server": r["svname"],
                "status": r["status"],
                "check": r.get("check_status", ""),
                "http_requests": int0(r.get("req_tot")),
                "errors_5xx": int0(r.get("hrsp_5xx")),
                "errors_4xx": int0(r.get("hrsp_4xx")),
                "avg_response_ms": int0(r.get("rtime")),
                "retries": int0(r.get("wretr")),
                "redispatches": int0(r.get("wredis")),
            }
            for r in api.stats()
            if r["pxname"] in SLOTS
        ]
        return api.active_backend(str(haproxy.paths(home)["map"])), rows, None
    except RuntimeAPIError as err:
        return None, [], str(err)


def serving_status(cfg: XRegionConfig, home: Path) -> dict:
    """State, versions per region, HAProxy's view of every server, recent serving events."""
    home = Path(home)
    sup = Supervisor(home)
    state = load_state(home)
    out: dict = {
        "running": state is not None,
        "frontend": cfg.serving.frontend_url,
        "stats": cfg.serving.haproxy_stats_url,
        "services": [],
        "servers": [],
        "versions": {},
    }
    for s in sup.known():
        if s.component in ("serving", "haproxy", "router"):
            st = sup.state(s.name)
            out["services"].append(
                {
                    "service": s.name,
                    "region": s.region,
                    "component": s.component,
                    "state": st,
                    "healthy": check_health(s, timeout=1.0)[0] if st == "running" else False,
                    "listen": ":".join(map(str, s.listen)) if s.listen else "",
                    "version": s.env.get("XREGION_SERVING_VERSION"),
                }
            )
    if state:
        active, rows, error = _haproxy_view(home)
        out.update(
            {
                "model": state.model,
                "active": active or state.active,
                "servers": rows,
                "pending": asdict(state.pending) if state.pending else None,
                "policy": asdict(state.policy),
                "tuning": asdict(state.tuning),
                "router_api": f"http://127.0.0.1:{state.api_port}",
                "versions": {r: state.serving().version for r in state.regions},
            }
        )
        if error:
            out["haproxy_error"] = error
    out["events"] = [e for e in events.read(home, kind="serving.") if e["kind"] != "serving.started"][-20:]
    return out
