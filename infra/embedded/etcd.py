"""The etcd cluster Patroni keeps its leader lock in: one member per region plus the witness.

Debian's ``etcd-server`` package (installed by ``infra/setup-system.sh``) provides the binary;
each member is a supervisor service (component ``etcd``) listening on loopback, its data under
the stack's data root. Three members keep a quorum through the loss of any one place: the
region that survives and the witness still elect an etcd leader, so Patroni can move the
database leader lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from xregion.config import EtcdMember, XRegionConfig

from .postgres import data_root, private_dir
from .supervisor import Service, SupervisorError

ETCD_BIN = os.environ.get("XREGION_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"
# etcd's defaults, on purpose: when the lost region held the etcd leader, the new etcd leader
# extends every lease (Patroni's leader lock included) to its full TTL plus the election timeout,
# so a longer election timeout would add to the database failover twice (election + extension)
HEARTBEAT_MS = 100
ELECTION_MS = 1000


def member_dir(home: Path, name: str) -> Path:
    return data_root(home) / "etcd" / name


def cluster_token(home: Path) -> str:
    """Unique per stack: members of two stacks on one machine never join each other."""
    return "xregion-" + hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:12]


def service(cfg: XRegionConfig, name: str, member: EtcdMember, home: Path) -> Service:
    initial = ",".join(f"{n}={m.peer_url}" for n, m in cfg.etcd_members())
    host, _, port = member.client.rpartition(":")
    argv = [
        ETCD_BIN,
        "--name", name,
        "--data-dir", str(member_dir(home, name)),
        "--listen-client-urls", member.client_url,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", initial,
        "--initial-cluster-token", cluster_token(home),
        "--initial-cluster-state", "new",  # ignored once the member has data: a restart rejoins
        "--heartbeat-interval", str(HEARTBEAT_MS),
        "--election-timeout", str(ELECTION_MS),
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip
    return Service(
        name=f"{name}-etcd",
        region=name,
        component="etcd",
        argv=argv,
        listen=(host, int(port)),
        health={"type": "http", "url": f"{member.client_url}/health"},
        start_timeout=60,
    )


def services(cfg: XRegionConfig, home: Path) -> list[Service]:
    return [service(cfg, name, m, home) for name, m in cfg.etcd_members()]


def prepare(cfg: XRegionConfig, home: Path) -> None:
    if not Path(ETCD_BIN).exists():
        raise SupervisorError(
            f"etcd is not installed ({ETCD_BIN} missing): run `bash infra/setup-system.sh` (Debian's etcd-server)"
        )
    for name, _ in cfg.etcd_members():
        private_dir(member_dir(home, name))


def health(member: EtcdMember, timeout: float = 1.0) -> tuple[bool, str]:
    """etcd's own health: true only while the member sees a leader (a quorum)."""
    try:
        with urllib.request.urlopen(f"{member.client_url}/health", timeout=timeout) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return False, f"HTTP {err.code}"
    except (OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return body.get("health") == "true", json.dumps(body)


def _rpc(member: EtcdMember, path: str, body: dict | None = None, timeout: float = 3.0) -> dict:
    req = urllib.request.Request(f"{member.client_url}/v3/{path}", data=json.dumps(body or {}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def leader(cfg: XRegionConfig) -> str | None:
    """Name of the etcd member that leads the raft group now (None when no member answers)."""
    for _, m in cfg.etcd_members():
        try:
            status = _rpc(m, "maintenance/status")
            members = _rpc(m, "cluster/member/list")["members"]
        except (OSError, ValueError, KeyError):
            continue
        return next((x.get("name") for x in members if x.get("ID") == status.get("leader")), None)
    return None


def prefer_leader(cfg: XRegionConfig, name: str) -> str | None:
    """Move the etcd leadership to member ``name`` (the witness); returns the leader afterwards.

    Why: when the lost region hosts the etcd leader, the remaining members first elect a new one
    (about one election timeout) and the new leader then extends every lease, Patroni's leader lock
    included, by its full TTL plus the election timeout: the database failover takes ~3 s longer.
    The witness hosts no database, so with the etcd leadership there the loss of a database region
    costs no etcd election. Best effort: leadership moves again after any election.
    """
    by_name = dict(cfg.etcd_members())
    for _, m in cfg.etcd_members():
        try:
            status = _rpc(m, "maintenance/status")
            members = _rpc(m, "cluster/member/list")["members"]
        except (OSError, ValueError, KeyError):
            continue
        ids = {x.get("name"): x.get("ID") for x in members}
        current = next((n for n, i in ids.items() if i == status.get("leader")), None)
        if current == name or current not in by_name or name not in ids:
            return current
        try:
            _rpc(by_name[current], "maintenance/transfer-leadership", {"targetID": ids[name]}, timeout=10)
        except (OSError, ValueError):
            return current
        return leader(cfg)
    return None
