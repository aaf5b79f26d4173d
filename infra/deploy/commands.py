"""What the platform's containers run: the same programs and arguments as the embedded platform,
with a deployment's addresses. Compose and Kubernetes both render these."""

from __future__ import annotations

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded.auth import AUTH_DATABASE, server_env, server_ini
from xregion.infra.serving.haproxy import SLOTS

from .common import (
    AUTH_INI,
    CONFIG_MOUNT,
    HAPROXY_CONFIG,
    LEDGER,
    LOCUST_MASTER_PORT,
    LOCUST_WEB_PORT,
    LOCUSTFILE,
    REPLICATOR_METRICS_PORT,
    ROUTER_API_PORT,
    host_port,
)
from .credentials import account_username


def auth_ini_name(region: str) -> str:
    return f"basic_auth-{region}.ini"


def auth_ini(cfg: XRegionConfig, region: str) -> str:
    """A region's MLflow auth settings, as the embedded platform writes them: user writes through
    the leader, password and permission reads from the region's own node first, so logins go on
    while no node accepts writes (a failover)."""
    return server_ini(
        cfg.database_uri(password="", database=AUTH_DATABASE),
        cfg.database_read_uri(region, password="", database=AUTH_DATABASE),
    )


SERVING_USERS = "ServingUser"  # Locust runs serving traffic only: the other personas need accounts


def mlflow_argv(cfg: XRegionConfig, region: RegionConfig, allowed_hosts: list[str]) -> list[str]:
    """A region's MLflow tracking server, as the embedded platform runs it, with 2 workers.

    Writes go through the multi-host URI that finds the leader; reads through the region's own node
    first (MLflow's read replica). ``--allowed-hosts``: MLflow refuses Host headers other than
    localhost and private IPs, so the region's service names must be listed."""
    _, port = host_port(region.mlflow_url)
    return [
        "mlflow",
        "server",
        "--backend-store-uri",
        cfg.database_uri(password=""),
        "--read-replica-backend-store-uri",
        cfg.database_read_uri(region.name, password=""),
        # the promotion gate (plugins/registry_store.py): the image has the plugin installed
        "--registry-store-uri",
        "xregion+" + cfg.database_uri(password=""),
        "--artifacts-destination",
        f"xregion:///{cfg.artifacts.prefix}",
        "--serve-artifacts",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--workers",
        "2",
        "--app-name",
        "basic-auth",  # MLflow's own auth (infra/embedded/auth.py): every request needs a user
        "--allowed-hosts",
        ",".join(allowed_hosts),
    ]


def mlflow_plain_env(region_name: str | None) -> dict[str, str]:
    """The non-secret environment of an MLflow server (``region_name`` None: set by the overlay)."""
    env = {"XREGION_CONFIG": CONFIG_MOUNT}
    if region_name:
        env["XREGION_LOCAL_REGION"] = region_name
    return {
        **env,
        "XREGION_LEDGER": LEDGER,  # shared with the replicator (plugins/ARTIFACTS.md, "The ledger")
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **server_env(AUTH_INI),
    }


def agent_argv(region: str, slot: str, port: int) -> list[str]:
    """A model server of one region and colour: its agent asks the router which version to serve."""
    assert slot in SLOTS, slot
    return ["xregion", "router", "agent", "--region", region, "--slot", slot, "--port", str(port)]


def serving_plain_env(cfg: XRegionConfig, region: RegionConfig, router_url: str) -> dict[str, str]:
    return {
        "XREGION_CONFIG": CONFIG_MOUNT,
        "XREGION_LOCAL_REGION": region.name,
        "MLFLOW_TRACKING_URI": region.mlflow_url,
        "MLFLOW_REGISTRY_URI": region.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": account_username(cfg, "serving"),  # read-only: it loads the model
        "MLFLOW_S3_ENDPOINT_URL": region.s3.endpoint_url,
        "AWS_DEFAULT_REGION": region.s3.region_name,
        "XREGION_ROUTER_URL": router_url,
    }


def router_argv(regions: str) -> list[str]:
    """The control loop of the embedded platform, driving the platform's model servers through their
    agents (``--external``); the API listens for the agents."""
    return [
        "xregion",
        "router",
        "run",
        "--external",
        "--regions",
        regions,
        "--api-host",
        "0.0.0.0",
        "--api-port",
        str(ROUTER_API_PORT),
    ]


def router_plain_env(cfg: XRegionConfig) -> dict[str, str]:
    return {
        "XREGION_CONFIG": CONFIG_MOUNT,
        # MANAGE on the served model: its automatic rollback writes the registry
        "MLFLOW_TRACKING_USERNAME": account_username(cfg, "router"),
        # a dead region's MLflow server costs the router seconds, not MLflow's minutes of back-off
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }


def replicator_argv() -> list[str]:
    return [
        "xregion",
        "replicate",
        "run",
        "--metrics-port",
        str(REPLICATOR_METRICS_PORT),
        "--metrics-host",
        "0.0.0.0",  # scraped from outside the container
    ]


def replicator_plain_env(cfg: XRegionConfig) -> dict[str, str]:
    return {"XREGION_CONFIG": CONFIG_MOUNT, "XREGION_LOCAL_REGION": cfg.primary.name, "XREGION_LEDGER": LEDGER}


def haproxy_argv(map_file: str, active: str) -> list[str]:
    """HAProxy refuses to start without its map file; the router (re)writes it, and says which colour
    serves as soon as it sees a new HAProxy, so a missing one starts as the state's default."""
    script = f'test -s "{map_file}" || echo "active {active}" > "{map_file}"; exec haproxy -W -db -f {HAPROXY_CONFIG}'
    return ["sh", "-c", script]


def locust_master_argv(cfg: XRegionConfig) -> list[str]:
    return [
        "locust",
        "-f",
        LOCUSTFILE,
        "--master",
        "--host",
        cfg.serving.frontend_url,
        "--web-port",
        str(LOCUST_WEB_PORT),
        "--master-bind-port",
        str(LOCUST_MASTER_PORT),
        SERVING_USERS,
    ]


def locust_worker_argv(master_host: str) -> list[str]:
    return [
        "locust",
        "-f",
        LOCUSTFILE,
        "--worker",
        "--master-host",
        master_host,
        "--master-port",
        str(LOCUST_MASTER_PORT),
        SERVING_USERS,
    ]


def job_argv(job: str) -> list[str]:
    """A one-shot job of ``python -m xregion.infra.deploy`` (database roles, MLflow accounts)."""
    return ["python", "-m", "xregion.infra.deploy", job]
