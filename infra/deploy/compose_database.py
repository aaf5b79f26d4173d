"""The compose deployment's registry database: Patroni nodes and the etcd cluster they keep their
leader lock in (one member per region and the witness), as the embedded platform runs them.

One settings source: each node's Patroni file is ``patroni.node_config`` (the embedded platform's
function) with a container's addresses, its Postgres parameters are ``patroni.postgres_parameters``
(in the dynamic configuration) and its pg_hba is ``postgres.hba`` over the compose network; etcd's
timing is the embedded platform's. No password is in any file: Patroni reads them from its
environment, and the one-shot ``database`` job creates the MLflow and DR roles and databases
(``postgres.create_roles``).
"""

from __future__ import annotations

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded import etcd, patroni

from .common import ETCD_IMAGE, GENERATED, PATRONI_CONFIG, PATRONI_IMAGE, dump, host_port
from .credentials import ETCD_TOKEN, patroni_env

COMPOSE_SUBNET = "172.29.0.0/24"  # the compose network: pg_hba admits clients from it (and loopback)
PG_DATA = "/var/lib/postgresql/data"  # the volume; the data directory is a child Patroni creates 0700
PG_BIN = "/usr/lib/postgresql/15/bin"  # of the postgres:15 image the Patroni image is built on
ETCD_DATA = "/etcd-data"


def env_ref(name: str) -> str:
    return f"${{{name}:?see .env.example}}"


def refs(mapping: dict[str, str]) -> dict[str, str]:
    """{container variable: variable of the env file} as compose environment entries."""
    return {inside: env_ref(var) for inside, var in mapping.items()}


def patroni_file(cfg: XRegionConfig, region: RegionConfig) -> dict:
    _, rest_port = region.patroni.rsplit(":", 1)
    return patroni.node_config(
        cfg,
        region,
        data_dir=f"{PG_DATA}/pgdata",
        pgpass="/tmp/pgpass",
        bin_dir=PG_BIN,
        listen=f"0.0.0.0:{region.pg_port}",
        rest_listen=f"0.0.0.0:{rest_port}",
        # Patroni itself connects to its Postgres on localhost
        networks=("127.0.0.1/32", COMPOSE_SUBNET),
    )


def patroni_files(cfg: XRegionConfig, src: str) -> dict[str, str]:
    header = GENERATED.format(kind="compose", src=src)
    return {f"patroni/{r.name}.yml": header + dump(patroni_file(cfg, r)) for r in cfg.regions}


def etcd_service(cfg: XRegionConfig, name: str, member) -> dict:
    _, client_port = host_port(member.client_url)
    _, peer_port = host_port(member.peer_url)
    initial = ",".join(f"{n}={m.peer_url}" for n, m in cfg.etcd_members())
    return {
        "image": ETCD_IMAGE,
        "command": ["/usr/local/bin/etcd"],
        "environment": {
            "ETCD_NAME": name,
            "ETCD_DATA_DIR": f"{ETCD_DATA}/data",  # etcd creates it 0700 (the volume's root is not)
            # etcd binds addresses, not names: it listens everywhere and advertises its service name
            "ETCD_LISTEN_CLIENT_URLS": f"http://0.0.0.0:{client_port}",
            "ETCD_ADVERTISE_CLIENT_URLS": member.client_url,
            "ETCD_LISTEN_PEER_URLS": f"http://0.0.0.0:{peer_port}",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": member.peer_url,
            "ETCD_INITIAL_CLUSTER": initial,
            "ETCD_INITIAL_CLUSTER_STATE": "new",  # ignored once the member has data: a restart rejoins
            "ETCD_INITIAL_CLUSTER_TOKEN": env_ref(ETCD_TOKEN),
            "ETCD_HEARTBEAT_INTERVAL": str(etcd.HEARTBEAT_MS),
            "ETCD_ELECTION_TIMEOUT": str(etcd.ELECTION_MS),
        },
        "volumes": [f"etcd-{name}:{ETCD_DATA}"],
        "healthcheck": {
            "test": ["CMD", "etcdctl", f"--endpoints=http://127.0.0.1:{client_port}", "endpoint", "health"],
            "interval": "5s",
            "timeout": "5s",
            "retries": 12,
        },
        "restart": "unless-stopped",
    }


def patroni_service(cfg: XRegionConfig, region: RegionConfig) -> dict:
    _, rest_port = region.patroni.rsplit(":", 1)
    check = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{rest_port}/health', timeout=4)"
    svc = {
        "image": PATRONI_IMAGE,
        "build": {"context": "./patroni", "dockerfile": "Dockerfile"},
        "command": ["patroni", PATRONI_CONFIG],
        "user": "postgres",
        "environment": refs(patroni_env()),
        "volumes": [f"postgres-{region.name}:{PG_DATA}", f"./patroni/{region.name}.yml:{PATRONI_CONFIG}:ro"],
        "depends_on": {f"etcd-{n}": {"condition": "service_started"} for n, _ in cfg.etcd_members()},
        # Patroni's /health answers 200 while its Postgres runs, leader or replica
        "healthcheck": {
            "test": ["CMD", "python3", "-c", check],
            "interval": "5s",
            "timeout": "5s",
            "retries": 36,
        },
        "restart": "unless-stopped",
    }
    if region.name != cfg.primary.name:  # a fresh cluster bootstraps in the primary region first
        svc["depends_on"][f"postgres-{cfg.primary.name}"] = {"condition": "service_healthy"}
    return svc


def database_services(cfg: XRegionConfig) -> dict[str, dict]:
    """etcd members and Patroni nodes (named ``postgres-<region>``: the regions file's postgres host)."""
    services = {f"etcd-{name}": etcd_service(cfg, name, m) for name, m in cfg.etcd_members()}
    return services | {f"postgres-{r.name}": patroni_service(cfg, r) for r in cfg.regions}
