"""Patroni manages the registry database: one Patroni per region's node, its leader lock in etcd.

``service()`` is the supervisor's record of a node (component ``patroni``): the launcher
(patroni_launcher.py) running Patroni, which runs Postgres as its own child, so that a fault on
the node (kill -9, SIGSTOP) hits both, as losing the host would. ``write_config()`` writes the
node's Patroni YAML (mode 0600, for the postgres user: it holds the replication, rewind and
superuser passwords). The rest is a small client of Patroni's REST API (GET /cluster, /patroni;
POST /failover, /switchover, /reinitialize; PATCH /config), which ``xregion dr`` and the drills use.
``start_cluster()`` starts every node for ``xregion up`` and returns the leader once its Postgres
accepts writes (``wait_writable_leader``: holding the lock is not enough, see there).

Timing, from the regions file's ``patroni`` section (see README.md, "The regions file"):
``ttl`` bounds failure detection, ``loop_wait`` is the HA cycle, ``retry_timeout`` how long an
etcd or Postgres call is retried before the leader demotes itself. ``postgres.replication: sync``
is Patroni's ``synchronous_mode`` (not strict unless ``patroni.synchronous_mode_strict``), with
``synchronous_commit = remote_apply``: a commit returns once the synchronous standby has replayed
it, so MLflow's read replica (the region's own node) shows every acknowledged write.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import psycopg2
import requests
import yaml

from xregion.config import RegionConfig, XRegionConfig
from xregion.errors import XRegionError
from xregion.net import bindable

from . import patroni_runtime
from .postgres import (
    PG_BIN,
    connection,
    data_root,
    hba,
    load_secrets,
    node_dir,
    postgres_owner,
    private_dir,
    role_names,
    run_as_postgres,
    write_private,
)
from .supervisor import PortInUse, Service, Supervisor

log = logging.getLogger(__name__)


class PatroniError(XRegionError, RuntimeError):
    """Patroni refused or did not answer; the message says which node and why."""


# --- configuration -------------------------------------------------------------------------------
def dynamic_config(cfg: XRegionConfig) -> dict:
    """Patroni's dynamic configuration (kept in etcd; applied with PATCH /config by ``xregion up``)."""
    p, sync = cfg.patroni, cfg.postgres.replication == "sync"
    return {
        "ttl": p.ttl,
        "loop_wait": p.loop_wait,
        "retry_timeout": p.retry_timeout,
        "maximum_lag_on_failover": p.maximum_lag_on_failover,
        "primary_start_timeout": p.primary_start_timeout,
        "synchronous_mode": sync,
        "synchronous_mode_strict": sync and p.synchronous_mode_strict,
        "synchronous_node_count": 1,
        "check_timeline": True,
        "postgresql": {
            "use_pg_rewind": True,  # an old primary rejoins as a standby without a full copy
            "use_slots": True,
            "parameters": postgres_parameters(cfg),
        },
    }


def postgres_parameters(cfg: XRegionConfig) -> dict:
    """The Postgres settings of every node (Patroni's dynamic configuration; the deployments'
    Patroni and CloudNativePG clusters take theirs from here too)."""
    sync = cfg.postgres.replication == "sync"
    return {
        "wal_level": "replica",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "wal_log_hints": "on",  # pg_rewind needs it
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "wal_keep_size": "256MB",
        "wal_receiver_status_interval": "1s",
        # a frozen (partitioned) standby still looks "streaming" until its walsender times out,
        # and in sync mode commits wait for it meanwhile: 10 s instead of 60 s bounds that wait
        "wal_sender_timeout": "10s",
        "password_encryption": "scram-sha-256",
        # read replicas show every acknowledged write in sync mode
        "synchronous_commit": "remote_apply" if sync else "on",
    }


def config_path(home: Path, region: str) -> Path:
    return data_root(home) / "patroni" / f"{region}.yml"


def local_config(cfg: XRegionConfig, region: RegionConfig, home: Path) -> dict:
    return node_config(
        cfg,
        region,
        data_dir=str(node_dir(home, region.name)),
        pgpass=str(data_root(home) / "patroni" / f"{region.name}.pgpass"),
        passwords=load_secrets(home),
    )


def node_config(
    cfg: XRegionConfig,
    region: RegionConfig,
    *,
    data_dir: str,
    pgpass: str,
    bin_dir: str = str(PG_BIN),
    listen: str | None = None,
    rest_listen: str | None = None,
    networks: tuple[str, ...] | None = None,
    passwords: dict[str, str] | None = None,
) -> dict:
    """One node's Patroni configuration: the embedded stack's (``local_config``) and a deployment's.

    ``listen``/``rest_listen`` default to the regions file's addresses (a container listens on
    0.0.0.0 and is reached by its name); ``networks`` are pg_hba's client networks. Without
    ``passwords`` the authentication sections name the users only, and Patroni reads the
    passwords from its environment (PATRONI_SUPERUSER_PASSWORD, PATRONI_REPLICATION_PASSWORD,
    PATRONI_REWIND_PASSWORD, PATRONI_RESTAPI_PASSWORD): a deployment's file holds no secret."""
    names = role_names(cfg)

    def user(logical: str) -> dict:
        return {"username": names[logical], **({"password": passwords[logical]} if passwords else {})}

    return {
        "scope": cfg.patroni.scope,
        "namespace": "/xregion/",
        "name": region.name,
        "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
        "restapi": {
            "listen": rest_listen or region.patroni,
            "connect_address": region.patroni,
            # failover, switchover, restart and reinitialize need these; health checks do not
            "authentication": user("patroni_api"),
        },
        "etcd3": {"hosts": cfg.etcd_hosts(first=region.name), "protocol": "http"},
        "bootstrap": {
            "dcs": dynamic_config(cfg),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, {"auth": "scram-sha-256"}],
        },
        "postgresql": {
            "listen": listen or region.postgres,
            "connect_address": region.postgres,
            "data_dir": data_dir,
            "bin_dir": bin_dir,
            "pgpass": pgpass,
            "authentication": {logical: user(logical) for logical in ("superuser", "replication", "rewind")},
            "parameters": {
                "unix_socket_directories": "",  # TCP only: no socket path shared between stacks
                "shared_buffers": "64MB",
                "max_connections": 100,
                "log_line_prefix": "%m [%p] ",
            },
            "pg_hba": hba(cfg) if networks is None else hba(cfg, networks),
            "basebackup": [{"checkpoint": "fast"}],
            # rewind first; when it is impossible, a fresh copy from the leader (never a manual step)
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def write_config(cfg: XRegionConfig, region: RegionConfig, home: Path) -> Path:
    owner = postgres_owner()
    private_dir(data_root(home) / "patroni", owner)
    private_dir(node_dir(home, region.name).parent, owner)
    path = config_path(home, region.name)
    write_private(path, yaml.safe_dump(local_config(cfg, region, home), sort_keys=False), owner)
    return path


def service(cfg: XRegionConfig, region: RegionConfig, home: Path) -> Service:
    argv, env = patroni_runtime.command()
    argv, env = list(argv), dict(env)
    host, _, port = region.patroni.rpartition(":")
    return Service(
        name=f"{region.name}-patroni",
        region=region.name,
        component="patroni",
        argv=[*argv, str(config_path(home, region.name))],
        listen=(host, int(port)),
        health={"type": "http", "url": f"{region.patroni_url}/health"},
        env=env,
        user="postgres" if run_as_postgres() else None,
        cwd=str(data_root(home)),
        stop_signal=signal.SIGTERM,  # Patroni stops Postgres (fast), then releases its leader lock
        start_timeout=180,  # a new standby first copies the leader (pg_basebackup)
    )


# --- the REST API ----------------------------------------------------------------------------------
def get(region: RegionConfig, path: str, timeout: float = 2.0) -> tuple[int | None, dict | None]:
    """(HTTP status, JSON body) of GET on one node's Patroni, or (None, None) when it does not answer."""
    try:
        resp = requests.get(f"{region.patroni_url}{path}", timeout=timeout)
    except requests.RequestException:
        return None, None
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


def cluster(cfg: XRegionConfig, prefer: str | None = None, timeout: float = 2.0) -> dict | None:
    """Patroni's view of the cluster (GET /cluster) from the first node that answers."""
    order = sorted(cfg.regions, key=lambda r: r.name != prefer)
    for r in order:
        status, body = get(r, "/cluster", timeout)
        if status == 200 and body is not None:
            return {**body, "answered_by": r.name}
    return None


def leader(view: dict | None) -> str | None:
    """The member holding the leader lock in a /cluster view (None while no one does)."""
    for m in (view or {}).get("members", []):
        if m.get("role") in ("leader", "standby_leader"):
            return m["name"]
    return None


def sync_standbys(view: dict | None) -> list[str]:
    return [m["name"] for m in (view or {}).get("members", []) if m.get("role") in ("sync_standby", "quorum_standby")]


def wait_leader(cfg: XRegionConfig, timeout: float = 120.0, running: bool = True) -> str:
    """Wait until some node holds the leader lock (and its Postgres runs); returns its name."""
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = cluster(cfg, timeout=1.0)
        name = leader(view)
        if name:
            m = next(m for m in view["members"] if m["name"] == name)
            if not running or m.get("state") == "running":
                return name
        time.sleep(0.3)
    raise PatroniError(f"no database leader after {timeout:.0f}s (last view: {view})")


def wait_writable_leader(cfg: XRegionConfig, home: Path, timeout: float = 120.0) -> str:
    """Wait until the leader's Postgres accepts writes; returns its name.

    Holding the lock is not enough: a node that restarts with its data (``xregion up`` after
    ``down``) comes up as a replica, takes the lock, and only then promotes its Postgres. Meanwhile
    /cluster already calls it leader, and Patroni's own /primary answers 200 (it checks the lock,
    not the recovery state), while every write fails as read-only."""
    deadline = time.monotonic() + timeout
    last = "no leader"
    while time.monotonic() < deadline:
        name = wait_leader(cfg, timeout=max(deadline - time.monotonic(), 1.0))
        try:
            with connection(cfg, home, cfg.region(name), role="superuser") as conn, conn.cursor() as cur:
                cur.execute("select pg_is_in_recovery()")
                if not cur.fetchone()[0]:
                    return name
                last = f"{name} holds the lock, its Postgres is still in recovery (promoting)"
        except psycopg2.OperationalError as e:
            last = f"{name} holds the lock, its Postgres does not answer ({str(e).strip()})"
        log.debug("waiting for a writable leader: %s", last)
        time.sleep(0.3)
    raise PatroniError(f"no writable database leader after {timeout:.0f}s ({last})")


def _auth(cfg: XRegionConfig, home: Path) -> tuple[str, str]:
    return role_names(cfg)["patroni_api"], load_secrets(home)["patroni_api"]


def call(
    cfg: XRegionConfig,
    home: Path,
    region: RegionConfig,
    method: str,
    path: str,
    body: dict | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """An authenticated POST/PATCH on one node's Patroni: (status, response text)."""
    try:
        resp = requests.request(
            method, f"{region.patroni_url}{path}", json=body, auth=_auth(cfg, home), timeout=timeout
        )
    except requests.RequestException as exc:
        raise PatroniError(f"{region.name}'s Patroni does not answer {method} {path}: {exc}") from None
    return resp.status_code, resp.text.strip()


def call_any(
    cfg: XRegionConfig,
    home: Path,
    method: str,
    path: str,
    body: dict | None = None,
    prefer: str | None = None,
    timeout: float = 60.0,
) -> tuple[int, str, str]:
    """The same call on the first node whose Patroni answers: (status, text, node)."""
    errors = []
    for r in sorted(cfg.regions, key=lambda r: r.name != prefer):
        try:
            status, text = call(cfg, home, r, method, path, body, timeout)
            return status, text, r.name
        except PatroniError as exc:
            errors.append(str(exc))
    raise PatroniError("no Patroni answers: " + "; ".join(errors))


def apply_dynamic_config(cfg: XRegionConfig, home: Path) -> None:
    """Make etcd's dynamic configuration match the regions file (bootstrap.dcs applies only once)."""
    status, text, _ = call_any(cfg, home, "PATCH", "/config", dynamic_config(cfg), timeout=10)
    if status != 200:
        raise PatroniError(f"PATCH /config refused: HTTP {status} {text}")


def _check_ports(cfg: XRegionConfig, sup: Supervisor) -> None:
    for r in cfg.regions:
        if sup.process(f"{r.name}-patroni") is None and not bindable(r.pg_host, r.pg_port):
            raise PortInUse(
                f"{r.name}-patroni: Postgres port {r.pg_port} on {r.pg_host} is already in use by another program "
                f"(or a stack with another XREGION_HOME). Stop it, or change regions[].postgres."
            )


def start_cluster(cfg: XRegionConfig, home: Path, sup: Supervisor, progress=print) -> RegionConfig:
    """Every region's Patroni; on a fresh stack the configured primary bootstraps the cluster
    (initdb) before the others copy it. Returns the leader's region."""
    _check_ports(cfg, sup)
    nodes = {r.name: service(cfg, r, home) for r in cfg.regions}
    fresh = not any((node_dir(home, r.name) / "PG_VERSION").exists() for r in cfg.regions)
    if fresh:
        progress(f"bootstrapping the database cluster in {cfg.primary.name} (Patroni: initdb)")
        sup.start(nodes[cfg.primary.name], progress=progress)
        wait_leader(cfg, timeout=120)
    progress("starting Patroni (and its Postgres) in every region")
    sup.start(*nodes.values(), progress=progress)
    apply_dynamic_config(cfg, home)
    leader = cfg.region(wait_writable_leader(cfg, home, timeout=120))
    view = cluster(cfg) or {}
    progress(
        f"database leader: {leader.name}; "
        + ", ".join(f"{m['name']} {m['role']} ({m['state']})" for m in view.get("members", []))
    )
    return leader
