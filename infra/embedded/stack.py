"""The embedded two-region platform on loopback: per region an S3 endpoint (moto's S3 server with
its objects kept on disk, ``s3server.py``), a Postgres node (region a the primary, the others
streaming standbys) and an MLflow server.

Services are built from the regions file only; the supervisor runs them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from xregion.config import RegionConfig, XRegionConfig
from xregion.home import xregion_home
from xregion.store import RegionStore

from . import postgres
from .supervisor import Service, Supervisor

BIN = Path(sys.executable).parent  # the venv's bin: mlflow, moto_server, uvicorn


def child_env(cfg: XRegionConfig, region: RegionConfig, home: Path | None = None) -> dict[str, str]:
    """Environment for a region's processes: the venv first on PATH, this region's S3 credentials."""
    key, secret = region.s3.credentials(region.name)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": region.s3.region_name,
        "MLFLOW_S3_ENDPOINT_URL": region.s3.endpoint_url,
        "XREGION_LOCAL_REGION": region.name,
        "XREGION_HOME": str(home or xregion_home()),
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.source:
        env["XREGION_CONFIG"] = str(Path(cfg.source).resolve())
    return env


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
    """``--registry-store-uri`` for the gated registry (plugins/registry_store.py) when installed."""
    from importlib.metadata import entry_points

    uri = "xregion+" + cfg.database_uri()
    scheme = uri.split(":", 1)[0]
    if any(ep.name == scheme for ep in entry_points(group="mlflow.model_registry_store")):
        return ["--registry-store-uri", uri]
    return []


def mlflow_service(cfg: XRegionConfig, region: RegionConfig, home: Path) -> Service:
    parts = urlsplit(region.mlflow_url)
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        cfg.database_uri(),
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
    ]
    return Service(
        name=f"{region.name}-mlflow",
        region=region.name,
        component="mlflow",
        argv=argv,
        listen=(parts.hostname, parts.port),
        health={"type": "http", "url": f"{region.mlflow_url}/health"},
        env={**child_env(cfg, region, home), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=str(home),
        start_timeout=120,
    )


def replicator_service(cfg: XRegionConfig, home: Path, metrics_port: int) -> Service:
    """``xregion replicate run`` as a supervised service: it pays what the host's ledger
    (XREGION_HOME/outbox.sqlite) owes, next to the MLflow servers that pay it too. Its health is
    its Prometheus endpoint. Named after the primary region, where the ledger's host runs."""
    region = cfg.primary
    return Service(
        name=f"{region.name}-replicator",
        region=region.name,
        component="replicator",
        argv=[str(BIN / "xregion"), "replicate", "run", "--metrics-port", str(metrics_port)],
        listen=("127.0.0.1", metrics_port),
        health={"type": "http", "url": f"http://127.0.0.1:{metrics_port}/metrics"},
        env=child_env(cfg, region, home),
        cwd=str(home),
        start_timeout=60,
    )


def services(cfg: XRegionConfig, home: Path) -> list[Service]:
    """Every service of the embedded stack, in start order within each kind."""
    out = []
    for r in cfg.write_order():
        out += [s3_service(cfg, r, home), postgres.service(cfg, r, home), mlflow_service(cfg, r, home)]
    return out


def select(cfg: XRegionConfig, home: Path, sup: Supervisor, region: str, component: str | None) -> list[Service]:
    """The services of one region (optionally one component), including ones others started."""
    cfg.region(region)  # a clear error for an unknown region
    pool = {s.name: s for s in services(cfg, home)}
    pool.update({s.name: s for s in sup.known()})
    chosen = [s for s in pool.values() if s.region == region and (component in (None, s.component))]
    if not chosen:
        comps = sorted({s.component for s in pool.values() if s.region == region})
        raise SystemExit(f"region {region} has no component {component!r}; components: {', '.join(comps)}")
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
    from xregion.topology import effective_config

    t0 = time.monotonic()
    home.mkdir(parents=True, exist_ok=True)
    cfg = effective_config(cfg, home)  # after a failover the promoted region is the primary
    sup = Supervisor(home)
    primary, standbys = cfg.primary, cfg.standbys
    by_kind = {(s.region, s.component): s for s in services(cfg, home)}

    progress("starting S3 endpoints and the primary Postgres")
    postgres.init_primary(cfg, primary, home, progress)
    first = [by_kind[(r.name, "s3")] for r in cfg.regions] + [by_kind[(primary.name, "postgres")]]
    sup.start(*first, progress=progress)
    for r in cfg.regions:
        RegionStore(r).ensure_bucket()
    postgres.bootstrap_database(cfg, progress)

    progress("starting the primary MLflow server and the standby Postgres nodes")
    sup.spawn(by_kind[(primary.name, "mlflow")])
    for r in standbys:
        postgres.init_standby(cfg, r, home, progress)
    sup.start(*[by_kind[(r.name, "postgres")] for r in standbys], progress=progress)
    postgres.apply_replication_mode(cfg, progress)
    sup.wait_healthy([by_kind[(primary.name, "mlflow")]], progress)

    # standby servers start after the primary's has created the schema, never racing its migration
    sup.start(*[by_kind[(r.name, "mlflow")] for r in standbys], progress=progress)
    return time.monotonic() - t0


def down(home: Path, progress=print) -> list[str]:
    return Supervisor(home).stop_all(progress)


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
