"""Which secret each component of a deployment gets, by name: least privilege in one place.

A secret is never rendered. The compose file refers to it as ``${VAR}`` (its value is in the
compose ``.env``), a Kubernetes manifest as a key of a Secret. Each function here answers, for
one component, {variable in the container: variable of the env file / key of the Secret}; the
two names differ where a container must see a scoped credential under the name the regions file
gives (a model server's ``XREGION_A_ACCESS_KEY`` holds region a's read-only key).

| who | gets |
| --- | --- |
| MinIO of region R | R's root user (nothing else) |
| MinIO init of region R (one-shot) | R's root user, and the keys of the two users it creates in R |
| etcd members | the cluster token (not a secret: it keeps two deployments apart) |
| Patroni nodes | the four Patroni passwords (superuser, replication, rewind, REST API) |
| database (one-shot) | the superuser's password, and those of the roles it creates (mlflow, xregion_dr) |
| MLflow servers | every region's platform S3 user, the mlflow role, the auth app's admin password and Flask secret |
| replicator | every region's platform S3 user |
| accounts (one-shot) | the auth app's admin password and the passwords of the accounts it creates |
| model servers of region R | R's read-only S3 user, the ``xregion-serving`` account, the router token |
| router | the ``xregion-router`` account, the router token |
| HAProxy | the stats password |
| Locust | nothing: serving traffic only |
| tools (``xregion`` CLI, compose) | the ``release-manager`` account |
"""

from __future__ import annotations

from dataclasses import dataclass

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded.auth import SERVER_SECRET_ENV, accounts
from xregion.infra.serving.haproxy import STATS_PASSWORD_ENV

ADMIN_PASSWORD, FLASK_SECRET = SERVER_SECRET_ENV
PATRONI_PASSWORDS = (
    "PATRONI_SUPERUSER_PASSWORD",
    "PATRONI_REPLICATION_PASSWORD",
    "PATRONI_REWIND_PASSWORD",
    "PATRONI_RESTAPI_PASSWORD",
)  # Patroni's own names: it reads them from its environment (patroni.node_config)
SUPERUSER_PASSWORD = PATRONI_PASSWORDS[0]
DR_PASSWORD = "XREGION_DR_PASSWORD"
ROUTER_TOKEN = "XREGION_ROUTER_TOKEN"
ETCD_TOKEN = "XREGION_ETCD_CLUSTER_TOKEN"
STATS_PASSWORD = STATS_PASSWORD_ENV
ACCOUNT_ROLES = ("scientist", "release-manager", "router", "serving")
PLACEHOLDER = "replace-me-with-a-long-random-secret"


@dataclass(frozen=True)
class Variable:
    name: str
    example: str  # the placeholder of .env.example / secrets.env.example
    purpose: str


def _tag(region: RegionConfig) -> str:
    return region.name.upper().replace("-", "_")


def minio_root(region: RegionConfig) -> tuple[str, str]:
    return f"XREGION_{_tag(region)}_MINIO_ROOT_USER", f"XREGION_{_tag(region)}_MINIO_ROOT_PASSWORD"


def platform_s3(region: RegionConfig) -> tuple[str, str]:
    """The platform's S3 user of a region (read/write on its bucket): the regions file's names."""
    return region.s3.access_key_env, region.s3.secret_key_env


def reader_s3(region: RegionConfig) -> tuple[str, str]:
    """The read-only S3 user of a region's bucket, for that region's model servers."""
    return f"XREGION_{_tag(region)}_READER_ACCESS_KEY", f"XREGION_{_tag(region)}_READER_SECRET_KEY"


def account_password(role: str) -> str:
    return f"XREGION_MLFLOW_{role.upper().replace('-', '_')}_PASSWORD"


def account_username(cfg: XRegionConfig, role: str) -> str:
    return accounts(cfg)[role].username


# --- what each component gets: {name in the container: variable} ------------------------------------
def _as_region(region: RegionConfig, pair: tuple[str, str]) -> dict[str, str]:
    """A region's S3 key pair under the regions file's names, and as AWS_* (boto3, MLflow)."""
    access, secret = pair
    return {
        region.s3.access_key_env: access,
        region.s3.secret_key_env: secret,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }


def _every_platform_s3(cfg: XRegionConfig, local: RegionConfig) -> dict[str, str]:
    # the xregion artifact repository and the replicator write to every region; AWS_* is the local one's
    out = {v: v for r in cfg.regions for v in platform_s3(r)}
    return {**out, **_as_region(local, platform_s3(local))}


def minio_env(region: RegionConfig) -> dict[str, str]:
    user, password = minio_root(region)
    return {"MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password}


def minio_init_env(region: RegionConfig) -> dict[str, str]:
    (pa, ps), (ra, rs) = platform_s3(region), reader_s3(region)
    return {
        **minio_env(region),
        "PLATFORM_ACCESS_KEY": pa,
        "PLATFORM_SECRET_KEY": ps,
        "READER_ACCESS_KEY": ra,
        "READER_SECRET_KEY": rs,
    }


def patroni_env() -> dict[str, str]:
    return {v: v for v in PATRONI_PASSWORDS}


def database_env(cfg: XRegionConfig) -> dict[str, str]:
    return {
        SUPERUSER_PASSWORD: SUPERUSER_PASSWORD,
        cfg.postgres.password_env: cfg.postgres.password_env,
        DR_PASSWORD: DR_PASSWORD,
    }


def mlflow_env(cfg: XRegionConfig, region: RegionConfig, database_password: bool = True) -> dict[str, str]:
    out = _every_platform_s3(cfg, region)
    if database_password:  # Kubernetes: from CloudNativePG's application Secret instead
        out[cfg.postgres.password_env] = cfg.postgres.password_env
    return {**out, ADMIN_PASSWORD: ADMIN_PASSWORD, FLASK_SECRET: FLASK_SECRET}


def replicator_env(cfg: XRegionConfig) -> dict[str, str]:
    return _every_platform_s3(cfg, cfg.primary)


def accounts_env() -> dict[str, str]:
    return {ADMIN_PASSWORD: ADMIN_PASSWORD, **{account_password(r): account_password(r) for r in ACCOUNT_ROLES}}


def model_server_env(region: RegionConfig) -> dict[str, str]:
    return {
        **_as_region(region, reader_s3(region)),
        "MLFLOW_TRACKING_PASSWORD": account_password("serving"),
        ROUTER_TOKEN: ROUTER_TOKEN,
    }


def router_env() -> dict[str, str]:
    return {"MLFLOW_TRACKING_PASSWORD": account_password("router"), ROUTER_TOKEN: ROUTER_TOKEN}


def haproxy_env() -> dict[str, str]:
    return {STATS_PASSWORD: STATS_PASSWORD}


def tools_env() -> dict[str, str]:
    return {"MLFLOW_TRACKING_PASSWORD": account_password("release-manager")}


# --- the example env files ------------------------------------------------------------------------
def _s3_variables(cfg: XRegionConfig, root: bool) -> list[Variable]:
    out = []
    for r in cfg.regions:
        if root:
            user, password = minio_root(r)
            out += [
                Variable(
                    user, f"xregion-{r.name}-root", f"region {r.name}'s MinIO root user: MinIO and its init job only"
                ),
                Variable(password, PLACEHOLDER, f"region {r.name}'s MinIO root password"),
            ]
        (pa, ps), (ra, rs) = platform_s3(r), reader_s3(r)
        out += [
            Variable(
                pa, f"xregion-{r.name}-platform", f"region {r.name}'s platform S3 user (read/write on {r.s3.bucket})"
            ),
            Variable(ps, PLACEHOLDER, "its secret key: MLflow servers and the replicator"),
            Variable(ra, f"xregion-{r.name}-reader", f"region {r.name}'s read-only S3 user (on {r.s3.bucket})"),
            Variable(rs, PLACEHOLDER, f"its secret key: region {r.name}'s model servers"),
        ]
    return out


def _platform_variables() -> list[Variable]:
    return [
        Variable(ADMIN_PASSWORD, PLACEHOLDER, "MLflow auth app's admin: MLflow servers and the accounts job"),
        Variable(FLASK_SECRET, PLACEHOLDER, "MLflow servers' Flask session secret (the same on every server)"),
        *(
            Variable(account_password(r), PLACEHOLDER, f"MLflow account of the {r} role (created by the accounts job)")
            for r in ACCOUNT_ROLES
        ),
        Variable(ROUTER_TOKEN, PLACEHOLDER, "the router API's bearer token: the router and the model-server agents"),
        Variable(STATS_PASSWORD, PLACEHOLDER, "HAProxy's stats page and Prometheus exporter (user xregion)"),
    ]


def compose_variables(cfg: XRegionConfig) -> list[Variable]:
    """Every variable the compose file refers to, in the order .env.example lists them."""
    return [
        *_s3_variables(cfg, root=True),
        Variable(cfg.postgres.password_env, PLACEHOLDER, "the mlflow database role (libpq reads it)"),
        *(Variable(v, PLACEHOLDER, "Patroni (read from its environment)") for v in PATRONI_PASSWORDS),
        Variable(DR_PASSWORD, PLACEHOLDER, "the xregion_dr database role (DR tooling), set by the database job"),
        Variable(ETCD_TOKEN, "replace-me-with-a-name-unique-to-this-deployment", "etcd's cluster token (not a secret)"),
        *_platform_variables(),
    ]


def k8s_variables(cfg: XRegionConfig) -> list[Variable]:
    """The keys of the Secret xregion-credentials (MinIO's root user is in minio-config, the mlflow
    role's password in CloudNativePG's xregion-pg-app)."""
    return [*_s3_variables(cfg, root=False), *_platform_variables()]


def env_example(variables: list[Variable], header: str) -> str:
    lines = [header.rstrip()]
    for v in variables:
        lines += [f"# {v.purpose}", f"{v.name}={v.example}"]
    return "\n".join(lines) + "\n"
