"""Who may do what on the platform's MLflow servers: MLflow's own auth app (``--app-name basic-auth``).

Every MLflow server runs the basic-auth app beside the gated registry store. Its user database is
``mlflow_auth`` in the platform's Postgres (so every region's server knows the same users, and it
survives a region like the rest of the registry). Accounts, generated at ``xregion up`` with
passwords in ``XREGION_HOME/secrets`` (0600):

| account | role | what it may do |
| --- | --- | --- |
| ``admin`` | MLflow admin | everything; creates the accounts below |
| ``scientist`` | scientist | read everything, log into any experiment (EDIT), register versions of the served model (EDIT) |
| ``release-manager`` | release manager | MANAGE on the served model: promote, roll back, delete versions; log drill runs |
| ``xregion-router`` | the serving control plane | MANAGE on the served model: its automatic rollback writes the registry |
| ``xregion-serving`` | model servers | read only (the default permission) |

Promotion to production additionally needs MANAGE (the registry plugin checks it), so a
scientist who can register a version cannot put it into production; the administrator creates the
served model at ``up``, because MLflow gives a registered model's creator MANAGE on it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.secrets import secret, secret_path

from .postgres import AUTH_DATABASE

log = logging.getLogger(__name__)
ADMIN = "admin"
MODEL = "{model}"  # in a grant's pattern: the regions file's registered model
# how long a server trusts a login it checked (MLflow's auth cache; see server_ini): a hash per
# account every 10 s instead of one per request, and a revoked password lives on 10 s elsewhere
AUTH_CACHE_TTL_S = 10
# what an MLflow server running the auth app needs in its environment, by name: the administrator's
# password (MLflow creates the admin account with it on first start) and the Flask session secret
SERVER_SECRET_ENV = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    grants: tuple[tuple[str, str, str], ...]  # (resource type, pattern, permission); MODEL = the served model

    @property
    def secret_name(self) -> str:
        return f"mlflow-{self.username}"


def accounts(cfg: XRegionConfig) -> dict[str, Account]:
    """The platform's accounts by role."""
    return {
        a.role: a
        for a in (
            Account("scientist", "scientist", (("experiment", "*", "EDIT"), ("registered_model", MODEL, "EDIT"))),
            Account(
                "release-manager",
                "release-manager",
                (("experiment", "*", "EDIT"), ("registered_model", MODEL, "MANAGE")),
            ),
            Account("xregion-router", "router", (("registered_model", MODEL, "MANAGE"),)),
            Account("xregion-serving", "serving", ()),
        )
    }


def password(home: Path, username: str) -> str:
    return secret(home, f"mlflow-{username}")


def credentials(home: Path, role: str, cfg: XRegionConfig) -> tuple[str, str]:
    """(username, password) of a role's account; ``admin`` for the administrator."""
    username = ADMIN if role == ADMIN else accounts(cfg)[role].username
    return username, password(home, username)


def existing_client_env(home: Path, role: str, cfg: XRegionConfig) -> dict[str, str]:
    """``client_env`` if this platform has generated that account (an embedded platform), else {}."""
    username = ADMIN if role == ADMIN else accounts(cfg)[role].username
    if not secret_path(home, f"mlflow-{username}").exists():
        return {}
    return client_env(home, role, cfg)


def client_env(home: Path, role: str, cfg: XRegionConfig) -> dict[str, str]:
    """What an MLflow client (this process) needs in its environment to act as ``role``."""
    user, pw = credentials(home, role, cfg)
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": pw}


def service_env(home: Path, role: str, cfg: XRegionConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(env, secret_env) of a supervised process acting as ``role``: the password by reference to its
    0600 file, so the pid file never holds it."""
    user, _ = credentials(home, role, cfg)
    return (
        {"MLFLOW_TRACKING_USERNAME": user},
        {"MLFLOW_TRACKING_PASSWORD": f"file:{secret_path(home, f'mlflow-{user}')}"},
    )


def server_ini(database_uri: str, read_database_uri: str | None = None) -> str:
    """The auth app's configuration file: no secret in it (the database password comes from the
    server's PGPASSFILE or PGPASSWORD, the admin password from MLFLOW_AUTH_ADMIN_PASSWORD).

    ``read_database_uri`` is MLflow's read replica for the user database: every request's password
    and permission check reads there, so a region's server keeps authenticating from its own node
    while no node accepts writes (a failover), as its tracking reads do.

    ``auth_cache_ttl_seconds``: MLflow's own cache of successful logins. Without it every request
    pays a deliberately slow password hash; on two cores the servers' reads took 2.5-9 s under a
    drill's load, and readers failed. The cost: a password changed or an account deleted through one
    region's server may still pass the password check of the others for up to AUTH_CACHE_TTL_S
    seconds (MLflow's permission lookup then refuses a deleted account)."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        + (f"read_database_uri = {read_database_uri}\n" if read_database_uri else "")
        + f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n"
        "grant_default_workspace_access = false\n"
    )


def server_env(ini_path: str) -> dict[str, str]:
    """The non-secret environment of an MLflow server running the auth app."""
    return {"MLFLOW_AUTH_CONFIG_PATH": ini_path, "XREGION_AUTH": "1"}


def ini_path(home: Path, region: str) -> Path:
    return Path(home) / "auth" / f"basic_auth-{region}.ini"


def prepare(cfg: XRegionConfig, home: Path) -> None:
    """Write the auth app's config file (0600) and generate every account's password (once)."""
    for region in cfg.regions:
        ini = ini_path(home, region.name)
        ini.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        read_uri = cfg.database_read_uri(region.name, database=AUTH_DATABASE)
        text = server_ini(cfg.database_uri(database=AUTH_DATABASE), read_uri)
        tmp = ini.with_name(f".{ini.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(ini)
    for username in [ADMIN, *(a.username for a in accounts(cfg).values())]:
        password(home, username)
    secret(home, "mlflow-flask-secret")


def server_config(cfg: XRegionConfig, home: Path, region: str) -> tuple[dict[str, str], dict[str, str]]:
    """(env, secret_env) of an MLflow server running the auth app: its config file, and the admin
    password and Flask secret by reference, never in argv or a pid file. Its user database is
    ``mlflow_auth`` through the same multi-host URI as the registry (the password from the
    server's PGPASSFILE), read from the region's own node first."""
    admin_env, flask_env = SERVER_SECRET_ENV
    secret_env = {
        admin_env: f"file:{secret_path(home, f'mlflow-{ADMIN}')}",
        flask_env: f"file:{secret_path(home, 'mlflow-flask-secret')}",
    }
    return server_env(str(ini_path(home, region))), secret_env


def ensure_accounts(cfg: XRegionConfig, home: Path, url: str) -> list[str]:
    """Create the accounts and their role grants (idempotent); returns what was created. Runs as the
    administrator against one region's server."""
    from xregion.home import environment

    with environment(**client_env(home, ADMIN, cfg)):
        return create_accounts(cfg, url, {a.username: password(home, a.username) for a in accounts(cfg).values()})


def create_accounts(cfg: XRegionConfig, url: str, passwords: Mapping[str, str]) -> list[str]:
    """The accounts of ``accounts(cfg)`` with ``passwords`` (username -> password), their role grants,
    and the served model (created by the administrator), through the auth app of the server at
    ``url``, as the administrator whose credentials are in this process's environment. Idempotent;
    returns the accounts created. The embedded stack and a deployment's one-shot job
    (``python -m xregion.infra.deploy accounts``) both run this."""
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():
        # importing MLflow's auth client imports its server package, which imports a Starlette module
        # deprecated in this Starlette (a UserWarning on every terminal): MLflow's to fix, not ours
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server.auth.client import AuthServiceClient

    created = []
    auth = AuthServiceClient(url)
    roles = {r.name: r for r in auth.list_roles("default")}
    for acc in accounts(cfg).values():
        try:
            auth.create_user(acc.username, passwords[acc.username])
            created.append(acc.username)
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code) and "exists" not in err.message:
                raise
        if not acc.grants or acc.role in roles:
            continue
        role = auth.create_role("default", acc.role, description=f"xregion {acc.role}")
        for resource, pattern, permission in acc.grants:
            auth.add_role_permission(role.id, resource, pattern.format(model=cfg.registry.model_name), permission)
        auth.assign_role(acc.username, role.id)
    _own_the_model(cfg, url)
    return created


def _own_the_model(cfg: XRegionConfig, url: str) -> None:
    """The served model is created by the administrator: MLflow gives a registered model's creator
    MANAGE on it, and a scientist registering the first version must not become its manager."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(url, registry_uri=url).create_registered_model(cfg.registry.model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
