"""The docker-compose deployment (``infra/compose/``): every region on one compose project.

Per region: MinIO and its init job, an etcd member, a Patroni node (``postgres-<region>``), an
MLflow server, and two model servers (blue, green) run by their agents. Once: the witness's etcd
member, the ``database`` and ``accounts`` jobs, the replicator with the ledger volume, the router
and HAProxy (one global front door) sharing the runtime-socket volume, Locust (profile ``load``)
and the ``xregion`` tools (profile ``tools``). Ports are published on 127.0.0.1 only, except the
front door's.
"""

from __future__ import annotations

from xregion.config import XRegionConfig
from xregion.infra.serving.haproxy import MONITOR_URI, SLOTS
from xregion.infra.serving.servers import colour_address

from . import commands, credentials, frontdoor, minio
from .commands import auth_ini, auth_ini_name
from .common import (
    AUTH_INI,
    CONFIG_MOUNT,
    GENERATED,
    HAPROXY_CONFIG,
    HAPROXY_IMAGE,
    IMAGE,
    IMAGE_UID,
    LEDGER_DIR,
    LOCUST_WEB_PORT,
    MINIO_CONSOLE_PORT,
    MINIO_IMAGE,
    REPLICATOR_METRICS_PORT,
    ROUTER_API_PORT,
    ROUTER_HOME,
    dump,
    host_port,
    py_http_check,
    refuse,
)
from .compose_database import COMPOSE_SUBNET, database_services, patroni_files, refs

BUILD = {"context": "../..", "dockerfile": "infra/Dockerfile"}
CONFIG_VOLUME = f"./regions.yaml:{CONFIG_MOUNT}:ro"
ROUTER_URL = f"http://router:{ROUTER_API_PORT}"


def check_compose(cfg: XRegionConfig) -> None:
    """Every host in the regions file must be the compose service that renders it."""
    wrong = []
    for r in cfg.regions:
        hosts = [
            ("s3.endpoint_url", host_port(r.s3.endpoint_url)[0], f"minio-{r.name}"),
            ("mlflow_url", host_port(r.mlflow_url)[0], f"mlflow-{r.name}"),
            ("serving_url", host_port(r.serving_url)[0], f"model-server-{r.name}"),
            ("postgres", r.pg_host, f"postgres-{r.name}"),
        ]
        if r.patroni and r.etcd:
            hosts += [("patroni", r.patroni.rpartition(":")[0], f"postgres-{r.name}")]
            hosts += [
                (f"etcd.{k}", getattr(r.etcd, k).rpartition(":")[0], f"etcd-{r.name}") for k in ("client", "peer")
            ]
        else:
            wrong.append(f"regions[{r.name}].patroni/etcd: the compose database runs under Patroni and etcd: set both")
        wrong += [
            f"regions[{r.name}].{key}: host must be the compose service {want!r}, got {got!r}"
            for key, got, want in hosts
            if got != want
        ]
    if cfg.witness:
        for k in ("client", "peer"):
            got, want = getattr(cfg.witness.etcd, k).rpartition(":")[0], f"etcd-{cfg.witness.name}"
            if got != want:
                wrong.append(f"witness.etcd.{k}: host must be the compose service {want!r}, got {got!r}")
    for key in ("frontend_url", "haproxy_stats_url"):
        url = getattr(cfg.serving, key)
        if host_port(url)[0] != "haproxy":
            wrong.append(f"serving.{key}: host must be the compose service 'haproxy', got {url!r}")
    if not cfg.postgres.password_env:
        wrong.append("postgres.password_env: name the variable that holds the database password (e.g. PGPASSWORD)")
    names = [v.name for v in credentials.compose_variables(cfg)] if cfg.postgres.password_env else []
    wrong += [
        f"regions[].s3 / postgres.password_env: variable {n} is named twice"
        for n in sorted(set(names))
        if names.count(n) > 1
    ]
    refuse("compose", wrong)


def _platform(command: list[str], env: dict[str, str], secrets: dict[str, str], **extra) -> dict:
    """A service of the platform image: the regions file mounted, its secrets by reference."""
    svc = {"image": IMAGE, "build": BUILD, "command": command, "environment": {**env, **refs(secrets)}}
    svc["volumes"] = [CONFIG_VOLUME, *extra.pop("volumes", [])]
    return {**svc, **extra}


def _healthcheck(test: list[str], retries: int, start: str | None = None) -> dict:
    check = {"test": test, "interval": "10s", "timeout": "5s", "retries": retries}
    return {**check, "start_period": start} if start else check


def _minio(cfg: XRegionConfig) -> dict[str, dict]:
    services = {}
    for r in cfg.regions:
        _, s3_port = host_port(r.s3.endpoint_url)
        services[f"minio-{r.name}"] = {
            "image": MINIO_IMAGE,
            "command": ["server", "/data", "--address", f":{s3_port}", "--console-address", f":{MINIO_CONSOLE_PORT}"],
            "environment": refs(credentials.minio_env(r)),
            "volumes": [f"minio-{r.name}:/data"],
            "healthcheck": {"test": ["CMD", "mc", "ready", "local"], "interval": "5s", "timeout": "5s", "retries": 12},
            "restart": "unless-stopped",
        }
        services[f"minio-init-{r.name}"] = {
            "image": MINIO_IMAGE,
            "entrypoint": ["sh", f"{minio.INIT_DIR}/init.sh"],
            "environment": {**minio.init_plain_env(r, r.s3.endpoint_url), **refs(credentials.minio_init_env(r))},
            "volumes": [f"./minio/{r.name}:{minio.INIT_DIR}:ro"],
            "depends_on": {f"minio-{r.name}": {"condition": "service_healthy"}},
            "restart": "no",
        }
    return services


def _mlflow(cfg: XRegionConfig) -> dict[str, dict]:
    services = {}
    primary = cfg.primary
    for r in cfg.regions:
        host, port = host_port(r.mlflow_url)
        deps = {f"minio-init-{x.name}": {"condition": "service_completed_successfully"} for x in cfg.regions}
        deps["database"] = {"condition": "service_completed_successfully"}
        if r.name != primary.name:  # the others start once the primary's server has migrated the schema
            deps[f"mlflow-{primary.name}"] = {"condition": "service_healthy"}
        services[f"mlflow-{r.name}"] = _platform(
            commands.mlflow_argv(cfg, r, [f"{host}:{port}", host, "localhost:*", "127.0.0.1:*"]),
            commands.mlflow_plain_env(r.name),
            credentials.mlflow_env(cfg, r),
            volumes=[f"./{auth_ini_name(r.name)}:{AUTH_INI}:ro", f"ledger:{LEDGER_DIR}"],
            ports=[f"127.0.0.1:{port}:{port}"],
            depends_on=deps,
            healthcheck=_healthcheck(py_http_check(f"http://127.0.0.1:{port}/health"), 12, "30s"),
            restart="unless-stopped",
        )
    return services


def _jobs_and_replicator(cfg: XRegionConfig) -> dict[str, dict]:
    plain = {"XREGION_CONFIG": CONFIG_MOUNT}
    return {
        "database": _platform(
            commands.job_argv("database"),
            plain,
            credentials.database_env(cfg),
            depends_on={f"postgres-{r.name}": {"condition": "service_healthy"} for r in cfg.regions},
            restart="no",
        ),
        "accounts": _platform(
            commands.job_argv("accounts"),
            plain,
            credentials.accounts_env(),
            depends_on={f"mlflow-{cfg.primary.name}": {"condition": "service_healthy"}},
            restart="no",
        ),
        "replicate": _platform(
            commands.replicator_argv(),
            commands.replicator_plain_env(cfg),
            credentials.replicator_env(cfg),
            volumes=[f"ledger:{LEDGER_DIR}"],
            depends_on={f"minio-init-{r.name}": {"condition": "service_completed_successfully"} for r in cfg.regions},
            healthcheck=_healthcheck(py_http_check(f"http://127.0.0.1:{REPLICATOR_METRICS_PORT}/metrics"), 6),
            restart="unless-stopped",
        ),
    }


def _serving(cfg: XRegionConfig) -> dict[str, dict]:
    """Per region a model server of each colour; the router and HAProxy share the runtime volume."""
    services = {}
    for r in cfg.regions:
        for slot in SLOTS:
            host, port = colour_address(r.serving_url, slot)
            # no health check: an idle colour serves nothing by design; HAProxy checks the serving one
            services[host] = _platform(
                commands.agent_argv(r.name, slot, port),
                commands.serving_plain_env(cfg, r, ROUTER_URL),
                credentials.model_server_env(r),
                depends_on={
                    f"mlflow-{r.name}": {"condition": "service_healthy"},
                    "router": {"condition": "service_started"},
                },
                restart="unless-stopped",
            )
    services["router"] = _platform(
        commands.router_argv(",".join(r.name for r in cfg.regions)),
        commands.router_plain_env(cfg),
        credentials.router_env(),
        # its state outlives the container; the runtime sockets and the map are shared with HAProxy only
        volumes=[f"router-state:{ROUTER_HOME}", f"frontdoor-run:{frontdoor.RUNTIME_DIR}"],
        depends_on={"accounts": {"condition": "service_completed_successfully"}},
        healthcheck=_healthcheck(py_http_check(f"http://127.0.0.1:{ROUTER_API_PORT}/healthz"), 6),
        restart="unless-stopped",
    )
    _, front = host_port(cfg.serving.frontend_url)
    _, stats = host_port(cfg.serving.haproxy_stats_url)
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{front} && printf 'GET {MONITOR_URI} HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"
    services["haproxy"] = {
        "image": HAPROXY_IMAGE,
        "user": f"{IMAGE_UID}:{IMAGE_UID}",  # the router's uid: both unix sockets are 0600
        "entrypoint": commands.haproxy_argv(frontdoor.MAP_FILE, frontdoor.INITIAL_COLOUR),
        "environment": refs(credentials.haproxy_env()),
        "volumes": [f"./haproxy.cfg:{HAPROXY_CONFIG}:ro", f"frontdoor-run:{frontdoor.RUNTIME_DIR}"],
        "ports": [f"{front}:{front}", f"127.0.0.1:{stats}:{stats}"],  # the front door is the one public port
        # the router's container comes first: it creates the shared volume owned by the image's user
        "depends_on": {"router": {"condition": "service_started"}},
        "healthcheck": {"test": ["CMD", "bash", "-c", probe], "interval": "5s", "timeout": "3s", "retries": 6},
        "restart": "unless-stopped",
    }
    return services


def _load_and_tools(cfg: XRegionConfig) -> dict[str, dict]:
    plain = {"XREGION_CONFIG": CONFIG_MOUNT}  # Locust sends serving traffic only: no credential
    master = _platform(
        commands.locust_master_argv(cfg),
        plain,
        {},
        profiles=["load"],
        ports=[f"127.0.0.1:{LOCUST_WEB_PORT}:{LOCUST_WEB_PORT}"],
        depends_on={"haproxy": {"condition": "service_healthy"}},
    )
    worker = _platform(
        commands.locust_worker_argv("locust-master"), plain, {}, profiles=["load"], depends_on=["locust-master"]
    )
    tools = _platform(  # `docker compose run --rm xregion promote|rollback|status ...` inside the network
        ["--help"],
        {
            **plain,
            "MLFLOW_TRACKING_URI": cfg.primary.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": credentials.account_username(cfg, "release-manager"),
        },
        credentials.tools_env(),
        profiles=["tools"],
        entrypoint=["xregion"],
        volumes=["./reports:/app/reports"],
    )
    return {"locust-master": master, "locust-worker": worker, "xregion": tools}


def render_compose(cfg: XRegionConfig, src: str = "regions.yaml") -> dict[str, str]:
    """Every file of ``infra/compose/`` that the regions file determines."""
    check_compose(cfg)
    services = {**_minio(cfg), **database_services(cfg), **_jobs_and_replicator(cfg), **_mlflow(cfg)}
    services |= _serving(cfg) | _load_and_tools(cfg)
    members = [f"etcd-{n}" for n, _ in cfg.etcd_members()]
    volumes = [*(f"{c}-{r.name}" for r in cfg.regions for c in ("minio", "postgres")), *members]
    compose = {
        "name": "xregion",
        "services": services,
        "networks": {"default": {"ipam": {"config": [{"subnet": COMPOSE_SUBNET}]}}},
        "volumes": {v: {} for v in [*volumes, "ledger", "router-state", "frontdoor-run"]},
    }
    header = GENERATED.format(kind="compose", src=src)
    fd = frontdoor.compose_front_door(cfg)
    files = {
        "docker-compose.yml": header + dump(compose),
        "haproxy.cfg": frontdoor.render(fd, cfg.regions, header),
        **{auth_ini_name(r.name): header + auth_ini(cfg, r.name) for r in cfg.regions},
        ".env.example": credentials.env_example(credentials.compose_variables(cfg), header + ENV_HEADER),
        **patroni_files(cfg, src),
    }
    for r in cfg.regions:
        files |= {f"minio/{r.name}/{name}": text for name, text in minio.init_files(r).items()}
    return files


ENV_HEADER = """# Example env file of the compose deployment: copy it to infra/compose/.env and replace EVERY
# value before `docker compose up`. Placeholders, not secrets; never commit .env. Each variable
# goes to the services named in its comment only (infra/deploy/credentials.py; infra/DEPLOY.md).
"""
