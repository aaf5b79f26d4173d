"""The embedded platform on loopback: per region an S3 endpoint (moto's S3 server with its objects
kept on disk, ``s3server.py``), an etcd member, a Postgres node run by Patroni, and an MLflow
server; plus the witness's etcd member (regions file: ``witness``). Patroni elects the database
leader through etcd; every MLflow server writes through the multi-host URI that finds the leader
and reads from its own region's node (MLflow's read replica), so reads go on while a failover is in
progress.

Services are built from the regions file only; the supervisor runs them.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

from xregion.config import RegionConfig, XRegionConfig
from xregion.home import xregion_home
from xregion.net import free_port
from xregion.store import RegionStore

from . import auth, etcd, mlflow_schema, patroni, postgres
from .supervisor import Service, Supervisor, SupervisorError

BIN = Path(sys.executable).parent  # the venv's bin: mlflow, moto_server, uvicorn


def child_env(cfg: XRegionConfig, region: RegionConfig, home: Path | None = None) -> dict[str, str]:
    """Environment for a region's processes: the venv first on PATH, the region's S3 endpoint. No
    secret: credentials travel by reference (``child_secrets``), never in a pid file."""
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_DEFAULT_REGION": region.s3.region_name,
        "MLFLOW_S3_ENDPOINT_URL": region.s3.endpoint_url,
        "XREGION_LOCAL_REGION": region.name,
        "XREGION_HOME": str(home or xregion_home()),
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.source:
        env["XREGION_CONFIG"] = str(Path(cfg.source).resolve())
    return env


def child_secrets(region: RegionConfig) -> dict[str, str]:
    """A region's S3 credentials for a child process, by reference to the variables the regions
    file names (the Supervisor resolves them at spawn)."""
    return {
        "AWS_ACCESS_KEY_ID": f"env:{region.s3.access_key_env}",
        "AWS_SECRET_ACCESS_KEY": f"env:{region.s3.secret_key_env}",
    }


def s3_data_dir(home: Path, region: str) -> Path:
    """Where a region's embedded S3 endpoint keeps its buckets and objects."""
    return home / "s3" / region


def s3_service(cfg: XRegionConfig, region: RegionConfig, home: Path | None = None) -> Service:
    parts = urlsplit(region.s3.endpoint_url)
    data = s3_data_dir(home or xregion_home(), region.name)
    return Service(
        name=f"{region.name}-s3",
        region=region.name,
        component="s3",
        argv=[
            str(BIN / "python"),
            "-m",
            "xregion.infra.embedded.s3server",
            "-H",
            parts.hostname,
            "-p",
            str(parts.port),
            "--data",
            str(data),
        ],
        listen=(parts.hostname, parts.port),
        health={"type": "http", "url": f"{region.s3.endpoint_url}/moto-api/"},
        env=child_env(cfg, region, home),
        secret_env=child_secrets(region),
        start_timeout=120,  # loads every object of the region before it listens
        data_dir=str(data),
    )


def artifact_destination(cfg: XRegionConfig, region: RegionConfig) -> str:
    """Where a region's MLflow server stores proxied artifacts: the replicated xregion scheme
    when its plugin is installed, else that region's own bucket."""
    from importlib.metadata import entry_points

    if any(ep.name == "xregion" for ep in entry_points(group="mlflow.artifact_repository")):
        return f"xregion:///{cfg.artifacts.prefix}"
    return f"s3://{region.s3.bucket}/{cfg.artifacts.prefix}"


def registry_store_uri(cfg: XRegionConfig) -> list[str]:
    """``--registry-store-uri`` for the gated registry (plugins/registry_store.py); refuses when it is not installed."""
    from importlib.metadata import entry_points

    uri = "xregion+" + cfg.database_uri()
    scheme = uri.split(":", 1)[0]
    if any(ep.name == scheme for ep in entry_points(group="mlflow.model_registry_store")):
        return ["--registry-store-uri", uri]
    # never start a registry without its gate: anything could then reach Production unreplicated
    raise SupervisorError(
        f"the gated registry store ({scheme}) is not installed in this Python environment: "
        f"reinstall the project (pip install -e .) so that MLflow finds its entry point"
    )


def mlflow_service(cfg: XRegionConfig, region: RegionConfig, home: Path) -> Service:
    parts = urlsplit(region.mlflow_url)
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        cfg.database_uri(),
        "--read-replica-backend-store-uri",
        cfg.database_read_uri(region.name),
        *registry_store_uri(cfg),
        "--artifacts-destination",
        artifact_destination(cfg, region),
        "--serve-artifacts",
        "--host",
        parts.hostname,
        "--port",
        str(parts.port),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",  # MLflow's own auth: every request needs a user (infra/embedded/auth.py)
    ]
    auth_env, auth_secrets = auth.server_config(cfg, home, region.name)
    env = {
        **child_env(cfg, region, home),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # the MLflow role's password, from a 0600 file: never in argv or in this record
        **postgres.child_env(home, "mlflow"),
        **auth_env,
    }
    return Service(
        name=f"{region.name}-mlflow",
        region=region.name,
        component="mlflow",
        argv=argv,
        listen=(parts.hostname, parts.port),
        health={"type": "http", "url": f"{region.mlflow_url}/health"},
        env=env,
        secret_env={**child_secrets(region), **auth_secrets},
        cwd=str(home),
        start_timeout=120,
    )


def replicator_port(home: Path) -> int:
    """The replicator's metrics port: chosen once, kept in XREGION_HOME (a restart finds it again)."""
    path = Path(home) / "run" / "replicator.port"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        path.write_text(str(port))
        return port


def replicator_service(cfg: XRegionConfig, home: Path, metrics_port: int | None = None) -> Service:
    """``xregion replicate run`` as a supervised service: it pays what the host's ledger
    (XREGION_HOME/outbox.sqlite) owes, next to the MLflow servers that pay it too. Its health is
    its Prometheus endpoint. Named after the primary region, where the ledger's host runs."""
    region = cfg.primary
    metrics_port = metrics_port or replicator_port(home)
    return Service(
        name=f"{region.name}-replicator",
        region=region.name,
        component="replicator",
        argv=[str(BIN / "xregion"), "replicate", "run", "--metrics-port", str(metrics_port)],
        listen=("127.0.0.1", metrics_port),
        health={"type": "http", "url": f"http://127.0.0.1:{metrics_port}/metrics"},
        env=child_env(cfg, region, home),
        secret_env=child_secrets(region),
        cwd=str(home),
        start_timeout=60,
    )


def services(cfg: XRegionConfig, home: Path) -> list[Service]:
    """Every service of the embedded stack: per region S3, etcd, Patroni (+ Postgres), MLflow; the witness."""
    out = []
    for r in cfg.write_order():
        out += [s3_service(cfg, r, home)]
        if r.etcd:
            out.append(etcd.service(cfg, r.name, r.etcd, home))
        if r.patroni:
            out.append(patroni.service(cfg, r, home))
        out.append(mlflow_service(cfg, r, home))
    if cfg.witness:
        out.append(etcd.service(cfg, cfg.witness.name, cfg.witness.etcd, home))
    out.append(replicator_service(cfg, home))  # pays what the shared ledger owes, whoever owed it
    return out


# a region's "postgres" is its database node: Patroni and the Postgres it runs, faulted together
ALIASES = {"postgres": "patroni", "database": "patroni"}


def select(cfg: XRegionConfig, home: Path, sup: Supervisor, region: str, component: str | None) -> list[Service]:
    """The services of one region (optionally one component), including ones others started.
    ``global`` names what belongs to no region: the front door (HAProxy) and its router."""
    if region != "global" and not (cfg.witness and region == cfg.witness.name):
        cfg.region(region)  # a clear error for an unknown region
    component = ALIASES.get(component, component)
    pool = {s.name: s for s in services(cfg, home)}
    pool.update({s.name: s for s in sup.known()})
    chosen = [s for s in pool.values() if s.region == region and (component in (None, s.component))]
    if not chosen:
        comps = sorted({s.component for s in pool.values() if s.region == region})
        raise SupervisorError(
            f"region {region} has no component {component!r}; components: {', '.join(comps) or 'none running'}"
        )
    return chosen


def fault(cfg: XRegionConfig, home: Path, action: str, region: str, component: str | None, progress=None) -> list[str]:
    """Inject a fault (kill | freeze | thaw | restart | wipe) into a region's components.

    A wiped S3 store comes back empty, as a store on a new disk would, and gets its bucket as at
    ``xregion up``: the objects are gone, the region still accepts writes."""
    sup = Supervisor(home)
    chosen = select(cfg, home, sup, region, component)
    done = sup.fault(action, chosen, progress)
    if action == "wipe":
        for svc in chosen:
            RegionStore(cfg.region(svc.region)).ensure_bucket()
    return done


def up(cfg: XRegionConfig, home: Path, progress=print) -> float:
    """Start (or complete) the stack and wait for health. Returns the seconds it took."""
    t0 = time.monotonic()
    if not cfg.ha:
        raise SupervisorError(
            "the regions file has no etcd/patroni keys: the embedded stack runs its database under "
            "Patroni (see infra/embedded/regions.yaml: regions[].etcd, regions[].patroni, witness)"
        )
    home.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(home)
    postgres.ensure_secrets(cfg, home)
    postgres.prepare_data_root(home)
    etcd.prepare(cfg, home)
    auth.prepare(cfg, home)
    for r in cfg.regions:
        patroni.write_config(cfg, r, home)
    by_kind = {(s.region, s.component): s for s in services(cfg, home)}

    progress("starting S3 endpoints and the etcd members")
    sup.start(*[s for s in by_kind.values() if s.component in ("s3", "etcd")], progress=progress)
    if cfg.witness:  # no etcd election when a database region is lost (see etcd.prefer_leader)
        progress(f"etcd leader: {etcd.prefer_leader(cfg, cfg.witness.name)}")
    for r in cfg.regions:
        RegionStore(r).ensure_bucket()

    leader = patroni.start_cluster(cfg, home, sup, progress)
    postgres.bootstrap_roles(cfg, home, leader)

    # every MLflow server at once when the databases have their schema (mlflow_schema.py), else
    # the leader's first: it migrates, and two servers migrating one database race
    first = by_kind[(leader.name, "mlflow")]
    schema = mlflow_schema.prepare(cfg, home, leader)
    if schema is None:
        progress(f"starting the MLflow servers ({leader.name} first: it creates the schema)")
        sup.start(first, progress=progress)
    else:
        progress(f"starting the MLflow servers (schema {schema})")
    # spawned before the accounts are made: that is done as the administrator, whose credentials
    # this process holds in its environment meanwhile, and a process spawned then would inherit them
    rest = [by_kind[(r.name, "mlflow")] for r in cfg.regions if r.name != leader.name]
    rest.append(replicator_service(cfg, home))
    for svc in (first, *rest):
        sup.spawn(svc)  # a running one is left alone
    sup.wait_healthy([first], progress)
    created = auth.ensure_accounts(cfg, home, leader.mlflow_url)
    sup.wait_healthy(rest, progress)
    if created:
        progress(f"MLflow accounts created: {', '.join(created)} (passwords in {home / 'secrets'})")
    return time.monotonic() - t0


def _stop_order(sup: Supervisor, svc: Service) -> tuple[int, int, str]:
    """The router first (it would react to its servers stopping), then clients, then stores;
    database replicas before the leader (a leader stopped first would hand its lock to a replica
    about to stop); etcd last (Patroni releases its lock through it)."""
    rank = {"router": -1, "serving": 0, "haproxy": 0, "mlflow": 1, "s3": 2, "patroni": 3, "etcd": 4}
    leader = 0
    if svc.component == "patroni" and svc.health.get("url"):
        try:
            import requests

            body = requests.get(svc.health["url"].rsplit("/", 1)[0] + "/patroni", timeout=1).json()
            leader = 1 if body.get("role") in ("primary", "master") else 0
        except Exception:  # a node that does not answer is stopped like a replica
            leader = 0
    return rank.get(svc.component, 0), leader, svc.name


def _grace(svc: Service, purge: bool) -> float:
    """Seconds a service has to stop before SIGKILL: none when its data is about to be deleted
    (``--purge``): a clean shutdown protects only what is kept. S3 stores keep theirs."""
    if purge and svc.component != "s3":
        return 0
    return 30 if svc.component == "patroni" else 15


def down(home: Path, progress=print, purge: bool = False) -> list[str]:
    """Stop every service (by pid); with ``purge`` also delete the data (Postgres, etcd) and secrets."""
    sup = Supervisor(home)
    stopped = []
    layers: dict[tuple[int, int], list[Service]] = {}
    for order, svc in sorted((_stop_order(sup, s), s) for s in sup.known()):
        # etcd members one by one: a leader stopping beside its peers spends seconds handing its
        # leadership to a member that is itself stopping
        layers.setdefault(order if svc.component == "etcd" else order[:2], []).append(svc)
    # the services of one layer together (a Patroni node takes seconds to stop its Postgres)
    with ThreadPoolExecutor(4) as pool:
        for layer in layers.values():
            stops = {pool.submit(sup.stop, svc.name, timeout=_grace(svc, purge)): svc.name for svc in layer}
            for done in as_completed(stops):
                done.result()
                stopped.append(stops[done])
                progress(f"stopped {stops[done]}")
    if purge:
        for path in postgres.remove_data(home):
            progress(f"removed {path}")
    return stopped


def _detail(svc: Service, healthy: bool, detail: str) -> str:
    """Patroni's own word on a node (role, state, timeline) rather than an HTTP status."""
    if svc.component != "patroni" or not svc.health.get("url"):
        return detail
    try:
        import requests

        body = requests.get(svc.health["url"].rsplit("/", 1)[0] + "/patroni", timeout=1.5).json()
        return f"{body.get('role')} ({body.get('state')}, timeline {body.get('timeline')})"
    except Exception:  # status reports, it never raises
        return detail


def status(cfg: XRegionConfig, home: Path) -> list[dict]:
    from .supervisor import check_health

    sup = Supervisor(home)
    pool = {s.name: s for s in services(cfg, home)}
    pool.update({s.name: s for s in sup.known()})
    rows = []
    for svc in sorted(pool.values(), key=lambda s: (s.region, s.component)):
        state = sup.state(svc.name)
        proc = sup.process(svc.name)
        healthy, detail = (False, state)
        if state == "running":
            healthy, detail = check_health(svc, timeout=1.5)
            detail = _detail(svc, healthy, detail)
        rows.append(
            {
                "service": svc.name,
                "region": svc.region,
                "component": svc.component,
                "state": state,
                "pid": proc.pid if proc else None,
                "healthy": healthy,
                "detail": detail,
                "listen": ":".join(map(str, svc.listen)) if svc.listen else "",
            }
        )
    return rows
