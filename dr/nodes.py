"""The database nodes as Patroni sees them: who holds the leader lock, each member's role, state,
timeline and lag, the synchronous standby; and each etcd member's health.

Patroni decides who is primary (its leader lock in etcd); nothing here promotes, fences or keeps
state of its own. ``current_primary`` is Patroni's leader; ``view`` is one ``GET /cluster``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from xregion.config import RegionConfig, XRegionConfig
from xregion.errors import XRegionError
from xregion.infra.embedded import etcd, patroni


class DRError(XRegionError, RuntimeError):
    """A DR operation cannot proceed; the message says why and what to do."""


@dataclass
class Member:
    name: str
    role: str | None  # leader | sync_standby | replica | ... (None: its Patroni does not answer)
    state: str | None  # running | streaming | starting | stopped | start failed | ...
    timeline: int | None = None
    lag_bytes: int | None = None  # behind the leader's WAL (None for the leader)
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    configured_role: str = ""


@dataclass
class ClusterView:
    leader: str | None
    members: list[Member]
    sync_standbys: list[str]
    answered_by: str | None
    replication: str
    etcd: dict[str, dict] = field(default_factory=dict)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def to_dict(self) -> dict:
        return asdict(self)


def view(cfg: XRegionConfig, prefer: str | None = None, with_etcd: bool = False) -> ClusterView:
    """Patroni's view of the cluster; regions whose Patroni is not in it are listed as unreachable."""
    raw = patroni.cluster(cfg, prefer=prefer) or {}
    members = []
    seen = set()
    for m in raw.get("members", []):
        seen.add(m["name"])
        members.append(
            Member(
                name=m["name"],
                role=m.get("role"),
                state=m.get("state"),
                timeline=m.get("timeline"),
                lag_bytes=m.get("lag") if isinstance(m.get("lag"), int) else None,
                receive_lsn=m.get("receive_lsn"),
                replay_lsn=m.get("replay_lsn"),
            )
        )
    members += [Member(name=r.name, role=None, state="unreachable") for r in cfg.regions if r.name not in seen]
    for m in members:
        m.configured_role = cfg.region(m.name).role if m.name in cfg.by_name else ""
    out = ClusterView(
        leader=patroni.leader(raw),
        members=sorted(members, key=lambda m: m.name),
        sync_standbys=patroni.sync_standbys(raw),
        answered_by=raw.get("answered_by"),
        replication=cfg.postgres.replication,
    )
    if with_etcd:
        for name, member in cfg.etcd_members():
            ok, detail = etcd.health(member)
            out.etcd[name] = {"healthy": ok, "detail": detail}
    return out


def streams_by_its_own_word(region: RegionConfig) -> bool:
    """Whether ``region``'s own Patroni answers and says its Postgres streams from the leader.
    /cluster is read from etcd, where a killed node's member key (and its last state, "streaming")
    outlives it until the ttl expires: only the node itself can say it is alive and streaming."""
    status, body = patroni.get(region, "/patroni")
    return status == 200 and (body or {}).get("replication_state") == "streaming"


def current_primary(cfg: XRegionConfig) -> str:
    """The region whose node holds Patroni's leader lock; DRError while nobody does."""
    v = view(cfg)
    if v.leader is None:
        why = "no Patroni answers" if v.answered_by is None else "no node holds the leader lock (failover in progress?)"
        raise DRError(f"no database primary: {why}; see `xregion dr status`")
    return v.leader


def primary_region(cfg: XRegionConfig) -> RegionConfig:
    return cfg.region(current_primary(cfg))
