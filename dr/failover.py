"""Commanded failover, planned switchover and rejoin, through Patroni's REST API.

Patroni promotes on its own when the primary is lost (its leader lock expires in etcd); these
commands are for an operator who does not want to wait, or who moves the primary on purpose:

failover --to T    ``POST /failover {"candidate": T}``: Patroni promotes T now (in sync mode only
                   the synchronous standby may be chosen: no acknowledged write is lost).
switchover --to T  ``POST /switchover``: the leader shuts down cleanly, T takes every byte of its
                   WAL and is promoted; the old leader follows T. Zero loss.
rejoin R           Patroni's own rejoin: R's Patroni is started if it is down and rewinds its node
                   (use_pg_rewind) onto the leader's timeline; when that is impossible,
                   ``POST /reinitialize`` copies the leader afresh.

Each command then proves it the way a user would: a metric logged through every running
region's MLflow server. The MLflow servers are never restarted: their backend URI lists every
node with target_session_attrs=read-write and MLflow's engine uses pool_pre_ping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xregion import events
from xregion.config import XRegionConfig
from xregion.infra.embedded import patroni
from xregion.infra.embedded.supervisor import Supervisor, SupervisorError
from xregion.mlflow_rest import MlflowRest, Unavailable

from .nodes import ClusterView, DRError, streams_by_its_own_word, view

CANARY_EXPERIMENT = "xregion-dr-canary"

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --- proof of writes -------------------------------------------------------------------------
class MlflowCanary:
    """Logs a metric through one region's MLflow REST API: the write a user would make."""

    def __init__(self, url: str):
        self.rest = MlflowRest([url], timeout=5)
        self.run_id: str | None = None

    def _experiment(self) -> str:
        try:
            return self.rest.call(
                "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": CANARY_EXPERIMENT}
            )[0]["experiment"]["experiment_id"]
        except Unavailable as err:
            if err.status != 404:
                raise
        try:
            return self.rest.call("POST", "/api/2.0/mlflow/experiments/create", json_body={"name": CANARY_EXPERIMENT})[
                0
            ]["experiment_id"]
        except Unavailable:  # another region created it meanwhile
            return self.rest.call(
                "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": CANARY_EXPERIMENT}
            )[0]["experiment"]["experiment_id"]

    def _run(self) -> str:
        if not self.run_id:
            body = {"experiment_id": self._experiment(), "start_time": int(time.time() * 1000), "run_name": "dr-canary"}
            self.run_id = self.rest.call("POST", "/api/2.0/mlflow/runs/create", json_body=body)[0]["run"]["info"][
                "run_id"
            ]
        return self.run_id

    def write(self) -> None:
        now = int(time.time() * 1000)
        body = {"run_id": self._run(), "key": "write_ok", "value": 1.0, "timestamp": now, "step": now}
        self.rest.call("POST", "/api/2.0/mlflow/runs/log-metric", json_body=body)

    def wait_write(self, timeout: float) -> tuple[float | None, str | None]:
        """(time of the first acknowledged write, None) or (None, last error)."""
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            try:
                self.write()
                return time.time(), None
            except (Unavailable, KeyError, ValueError) as exc:
                err = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
        return None, err


def confirm_mlflow_writes(
    cfg: XRegionConfig, home: Path, timeout: float = 60.0, progress: Progress = _quiet
) -> dict[str, dict]:
    """Each region whose MLflow server is running must log a metric again."""
    sup = Supervisor(home)
    out = {}
    for r in cfg.regions:
        state = sup.state(f"{r.name}-mlflow")
        if state in ("dead", "frozen"):  # the region's server is lost too: nothing to confirm there
            out[r.name] = {"ok": None, "ts": None, "error": f"skipped: {r.name}-mlflow is {state}"}
            progress(f"MLflow {r.name}: skipped ({state})")
            continue
        ts, err = MlflowCanary(r.mlflow_url).wait_write(timeout)
        out[r.name] = {"ok": ts is not None, "ts": ts, "error": err}
        progress(f"MLflow {r.name}: " + ("writes again" if ts else f"no write: {err}"))
    return out


# --- results ---------------------------------------------------------------------------------
@dataclass
class FailoverResult:
    action: str  # failover | switchover
    from_: str | None
    to: str
    replication: str
    lag_bytes_before: int | None  # what Patroni reported for the target just before (async: what may be lost)
    sync_standbys_before: list[str]
    command_seconds: float  # the command, from its start to the target running as the leader
    rto_seconds: float | None  # from the command's start to the first acknowledged MLflow write
    patroni_answer: str
    mlflow: dict[str, dict]
    old_primary_following: bool | None = None  # switchover: the old leader streams from the new one
    ok: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["from"] = d.pop("from_")
        return d


@dataclass
class RejoinResult:
    region: str
    primary: str
    method: str  # already streaming | follow | pg_rewind | reinitialize (fresh copy of the leader)
    seconds: float
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --- helpers ---------------------------------------------------------------------------------
def wait_role(
    cfg: XRegionConfig, name: str, roles: tuple[str, ...], states: tuple[str, ...], timeout: float
) -> ClusterView:
    """Until member ``name`` has one of ``roles`` and ``states`` in Patroni's view."""
    deadline = time.monotonic() + timeout
    v = view(cfg, prefer=name)
    while time.monotonic() < deadline:
        v = view(cfg, prefer=name)
        m = v.member(name)
        own_word = "streaming" not in states or streams_by_its_own_word(cfg.region(name))
        if m and m.role in roles and m.state in states and own_word:
            return v
        time.sleep(0.1)
    m = v.member(name)
    raise DRError(f"{name} is not {'/'.join(roles)} ({'/'.join(states)}) after {timeout:.0f}s: {m}")


def _check_target(cfg: XRegionConfig, v: ClusterView, to: str) -> None:
    cfg.region(to)
    if v.answered_by is None:
        raise DRError("no Patroni answers: start the stack (`xregion up`) or the target region's node")
    if v.leader == to:
        raise DRError(f"{to} is already the primary; nothing to fail over")
    m = v.member(to)
    if m is None or m.role is None or m.state not in ("streaming", "running"):
        raise DRError(f"{to}'s node is not a healthy replica ({m}); choose another region or `xregion dr rejoin {to}`")
    if cfg.postgres.replication == "sync" and v.sync_standbys and to not in v.sync_standbys and v.leader:
        raise DRError(
            f"{to} is not the synchronous standby ({', '.join(v.sync_standbys)}): promoting it could lose "
            f"acknowledged writes; fail over to {v.sync_standbys[0]}"
        )


def _settled(cfg: XRegionConfig, to: str, timeout: float = 15.0) -> ClusterView:
    """Patroni's view once ``to`` is the synchronous standby (sync mode), or as it is after ``timeout``:
    a replica that just caught up becomes synchronous within a cycle or two."""
    deadline = time.monotonic() + timeout
    v = view(cfg, prefer=to)
    while cfg.postgres.replication == "sync" and v.leader and to not in v.sync_standbys:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
        v = view(cfg, prefer=to)
    return v


def _promote(
    cfg: XRegionConfig, home: Path, kind: str, to: str, body: dict, progress: Progress, mlflow_timeout: float
) -> FailoverResult:
    t0 = time.time()
    before = _settled(cfg, to)
    _check_target(cfg, before, to)
    target = before.member(to)
    progress(f"{kind}: {before.leader or '(no leader)'} -> {to} (lag of {to}: {target.lag_bytes} bytes)")
    status, text, node = patroni.call_any(cfg, home, "POST", f"/{kind}", body, prefer=to, timeout=60)
    if status not in (200, 202):
        raise DRError(f"Patroni ({node}) refused the {kind}: HTTP {status} {text}")
    progress(f"Patroni ({node}): {text}")
    wait_role(cfg, to, ("leader",), ("running",), timeout=60)
    t_leader = time.time()
    progress(f"{to} holds the leader lock and runs as the primary ({t_leader - t0:.2f}s)")
    mlflow = confirm_mlflow_writes(cfg, home, mlflow_timeout, progress)
    first = min((m["ts"] for m in mlflow.values() if m["ts"]), default=None)
    return FailoverResult(
        action=kind,
        from_=before.leader,
        to=to,
        replication=cfg.postgres.replication,
        lag_bytes_before=target.lag_bytes,
        sync_standbys_before=before.sync_standbys,
        command_seconds=round(t_leader - t0, 3),
        rto_seconds=round(first - t0, 3) if first else None,
        patroni_answer=text,
        mlflow=mlflow,
        ok=all(m["ok"] is not False for m in mlflow.values()),
    )


# --- commands --------------------------------------------------------------------------------
def failover(
    cfg: XRegionConfig, home: Path, to: str, progress: Progress = _quiet, mlflow_timeout: float = 60.0
) -> FailoverResult:
    """Promote ``to`` now (Patroni's manual failover), whether or not the leader is alive."""
    res = _promote(cfg, home, "failover", to, {"candidate": to}, progress, mlflow_timeout)
    events.record("db.failover", home, **{k: v for k, v in res.to_dict().items() if k != "mlflow"})
    return res


def switchover(
    cfg: XRegionConfig, home: Path, to: str, progress: Progress = _quiet, mlflow_timeout: float = 60.0
) -> FailoverResult:
    """Planned, zero-loss change of leader; the old leader comes back as a replica of ``to``."""
    v = view(cfg, prefer=to)
    if v.leader is None:
        raise DRError(f"no leader to switch over from: use `xregion dr failover --to {to}`")
    old = v.leader
    res = _promote(cfg, home, "switchover", to, {"leader": old, "candidate": to}, progress, mlflow_timeout)
    try:
        wait_role(cfg, old, ("replica", "sync_standby", "quorum_standby"), ("streaming",), timeout=120)
        res.old_primary_following = True
        progress(f"{old} streams from {to}")
    except DRError as err:
        res.old_primary_following = False
        res.ok = False
        progress(str(err))
    events.record("db.switchover", home, **{k: v for k, v in res.to_dict().items() if k != "mlflow"})
    return res


def _log_since(sup: Supervisor, name: str, offset: int) -> str:
    path = sup.log(name)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _method(log: str) -> str:
    if "reinitialize" in log.lower() or "bootstrap from leader" in log:
        return "reinitialize"
    if "pg_rewind exit code=0" in log:
        return "pg_rewind"
    return "follow"


def rejoin(
    cfg: XRegionConfig, home: Path, region: str, progress: Progress = _quiet, timeout: float = 180.0
) -> RejoinResult:
    """Make ``region``'s node a streaming replica of the leader, the way Patroni does it."""
    from xregion.infra.embedded import patroni as pt

    t0, steps = time.time(), []

    def step(msg: str) -> None:
        steps.append(msg)
        progress(msg)

    v = view(cfg)
    if v.leader is None:
        raise DRError("no leader to rejoin: wait for Patroni's election, or see `xregion dr status`")
    if v.leader == region:
        raise DRError(f"{region} is the leader; switch over to another region before rejoining it")
    sup = Supervisor(home)
    svc = pt.service(cfg, cfg.region(region), home)
    offset = sup.log(svc.name).stat().st_size if sup.log(svc.name).exists() else 0
    if sup.state(svc.name) == "running" and streams_by_its_own_word(cfg.region(region)):
        return RejoinResult(region, v.leader, "already streaming", round(time.time() - t0, 3), steps)
    if sup.state(svc.name) == "frozen":
        sup.fault("thaw", [svc])
        step(f"{svc.name} thawed")
    if sup.process(svc.name) is None:
        step(f"starting {svc.name}: Patroni rewinds the node onto {v.leader}'s timeline if it must")
        try:
            sup.start(svc, progress=step)
        except SupervisorError as err:
            step(f"{svc.name} did not become healthy: {str(err).splitlines()[0]}")
    roles, states = ("replica", "sync_standby", "quorum_standby"), ("streaming",)
    try:
        wait_role(cfg, region, roles, states, timeout=min(timeout, 90.0))
    except DRError:
        step(f"{region} does not stream from {v.leader}: POST /reinitialize (a fresh copy of the leader)")
        status, text = patroni.call(cfg, home, cfg.region(region), "POST", "/reinitialize", {"force": True})
        if status not in (200, 202):
            raise DRError(f"Patroni ({region}) refused to reinitialize: HTTP {status} {text}") from None
        wait_role(cfg, region, roles, states, timeout=timeout)
    method = _method(_log_since(sup, svc.name, offset))
    step(f"{region} streams from {v.leader} ({method})")
    res = RejoinResult(region, v.leader, method, round(time.time() - t0, 3), steps)
    events.record("db.rejoin", home, **res.to_dict())
    return res


def status(cfg: XRegionConfig, home: Path) -> ClusterView:
    """Patroni's view: the leader, each member's role, state, timeline and lag; etcd's health."""
    return view(cfg, with_etcd=True)


__all__ = ["DRError", "MlflowCanary", "confirm_mlflow_writes", "failover", "switchover", "rejoin", "status"]
