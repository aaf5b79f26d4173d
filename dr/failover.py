"""Database failover, planned switchover and rejoin of an old primary.

failover --to T   the primary is lost (or must be abandoned): report what may be lost, fence the
                  old primary, promote T, prove T and every region's MLflow server take writes.
switchover --to T planned: stop the primary cleanly, wait until T has every byte of its WAL,
                  promote T, bring the old primary back as T's standby. Zero loss.
rejoin R          the fenced old primary R becomes a standby of the current primary (pg_rewind,
                  or a fresh base backup when rewind is impossible).

The MLflow servers are never restarted: their backend URI lists every node with
target_session_attrs=read-write, and MLflow's engine uses pool_pre_ping, so the next request
after promotion connects to the new primary.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import requests

from xregion import events
from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded import postgres as pg
from xregion.infra.embedded.postgres import PG_BIN, SUPERUSER, data_dir, pg_user_kwargs, prepare_dir
from xregion.infra.embedded.supervisor import Supervisor, SupervisorError

from .nodes import (
    DRError,
    connect,
    controldata,
    current_primary,
    effective_config,
    load_state,
    lsn_int,
    make_standby_config,
    probe,
    probe_all,
    replication_rows,
    save_state,
    set_synchronous_standbys,
    unshipped_wal,
)

CANARY_EXPERIMENT = "xregion-dr-canary"

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --- proof of writes -------------------------------------------------------------------------
def database_write(region: RegionConfig, timeout: float = 30.0) -> float:
    """A committed write on the node (heartbeat row); returns when it was acknowledged."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            conn = connect(region)
            with conn.cursor() as cur:
                cur.execute(
                    "create table if not exists xregion_dr_heartbeat (ts timestamptz primary key default now(), "
                    "node text)"
                )
                cur.execute("insert into xregion_dr_heartbeat (node) values (%s)", (region.name,))
            conn.close()
            return time.time()
        except psycopg2.Error as exc:
            last = exc
            time.sleep(0.2)
    raise DRError(f"{region.name} does not accept writes after {timeout:.0f}s: {last}")


class MlflowCanary:
    """Logs a metric through one region's MLflow REST API: the write a user would make."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.run_id: str | None = None
        self.session = requests.Session()

    def _post(self, path: str, body: dict) -> dict:
        r = self.session.post(f"{self.url}/api/2.0/mlflow/{path}", json=body, timeout=5)
        r.raise_for_status()
        return r.json()

    def _run(self) -> str:
        if self.run_id:
            return self.run_id
        r = self.session.get(
            f"{self.url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": CANARY_EXPERIMENT},
            timeout=5,
        )
        if r.status_code == 200:
            exp = r.json()["experiment"]["experiment_id"]
        else:
            try:
                exp = self._post("experiments/create", {"name": CANARY_EXPERIMENT})["experiment_id"]
            except requests.HTTPError:  # another region created it meanwhile
                r = self.session.get(
                    f"{self.url}/api/2.0/mlflow/experiments/get-by-name",
                    params={"experiment_name": CANARY_EXPERIMENT},
                    timeout=5,
                )
                r.raise_for_status()
                exp = r.json()["experiment"]["experiment_id"]
        self.run_id = self._post(
            "runs/create", {"experiment_id": exp, "start_time": int(time.time() * 1000), "run_name": "dr-canary"}
        )["run"]["info"]["run_id"]
        return self.run_id

    def write(self) -> None:
        now = int(time.time() * 1000)
        self._post(
            "runs/log-metric", {"run_id": self._run(), "key": "write_ok", "value": 1.0, "timestamp": now, "step": now}
        )

    def wait_write(self, timeout: float) -> tuple[float | None, str | None]:
        """(time of the first acknowledged write, None) or (None, last error)."""
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            try:
                self.write()
                return time.time(), None
            except (requests.RequestException, KeyError, ValueError) as exc:
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


# --- lag -------------------------------------------------------------------------------------
def replication_lag(
    cfg: XRegionConfig, home: Path, old: RegionConfig, target: RegionConfig, nodes: dict[str, dict]
) -> dict:
    """What the target lacks of the old primary, in bytes and seconds, measured before promotion."""
    tgt = nodes[target.name]
    lag = {
        "source": None,
        "bytes": None,
        "seconds": None,
        "commits": None,
        "target_receive_lsn": tgt.get("receive_lsn"),
        "target_replay_lsn": tgt.get("replay_lsn"),
    }
    if nodes[old.name]["role"] == "primary":  # the old primary still answers: ask it
        rows = {r["standby"]: r for r in replication_rows(old)}
        row = rows.get(target.name)
        if row:
            lag.update(source=f"pg_stat_replication on {old.name}", bytes=row["lag_bytes"], seconds=row["lag_seconds"])
        return lag
    # the old primary is down: what its own WAL holds beyond what the target received
    # the receive position stays at the start of the stream until new WAL arrives: take the larger
    received = max((tgt.get("receive_lsn"), tgt.get("replay_lsn")), key=lambda x: lsn_int(x) or 0)
    wal = unshipped_wal(home, old, received)
    if wal is not None:
        seconds = 0.0
        if wal["commits"] and wal["last_commit_ts"] and tgt.get("last_replay_ts"):
            seconds = max(0.0, wal["last_commit_ts"] - tgt["last_replay_ts"])
        receive_gap = max(0, (lsn_int(tgt["receive_lsn"]) or 0) - (lsn_int(tgt["replay_lsn"]) or 0))
        lag.update(
            source=f"{old.name}'s WAL on disk (pg_waldump) vs {target.name}'s received WAL",
            bytes=wal["bytes"],
            seconds=seconds,
            commits=wal["commits"],
            unreplayed_bytes=receive_gap,
        )
    else:
        lag.update(
            source=f"{old.name} unreachable and its WAL not readable: unknown; "
            f"{target.name} last replayed a commit at {tgt.get('last_replay_ts')}"
        )
    return lag


# --- fencing ---------------------------------------------------------------------------------
def fence(
    cfg: XRegionConfig, home: Path, old: RegionConfig, new_primary: RegionConfig, progress: Progress = _quiet
) -> None:
    """The old primary can never come back as a primary on its own: stop it, make it a standby."""
    sup = Supervisor(home)
    name = f"{old.name}-postgres"
    if sup.process(name) is not None:
        progress(f"stopping {name} (fence)")
        sup.stop(name)
    else:  # the postmaster is gone; backends it left behind (a crash of the postmaster alone) go too
        leftovers = sup.leftovers(name)
        if leftovers:
            progress(f"{name}: killing {len(leftovers)} process(es) the dead postmaster left behind")
            sup.stop(name)
    if (data_dir(home, old) / "PG_VERSION").exists():
        make_standby_config(home, old, new_primary)
        progress(f"{name}: standby.signal written, following {new_primary.name} if ever started")
    fenced = sorted(set(load_state(home).get("fenced", [])) | {old.name})
    save_state(home, fenced=fenced)


def checkpoint(region: RegionConfig) -> float:
    """An immediate checkpoint; after a promotion it puts the new timeline in the control file and
    gives pg_rewind a checkpoint on it (Patroni does the same after promote). Returns seconds."""
    t = time.monotonic()
    conn = connect(region)
    with conn.cursor() as cur:
        cur.execute("checkpoint")
    conn.close()
    return time.monotonic() - t


def _promote(region: RegionConfig) -> None:
    conn = connect(region)
    with conn.cursor() as cur:
        cur.execute("select pg_promote(true, 60)")
        if not cur.fetchone()[0]:
            raise DRError(f"pg_promote on {region.name} did not complete within 60s")
    conn.close()


def _other_standbys(
    cfg: XRegionConfig, home: Path, new_primary: RegionConfig, old: RegionConfig, progress: Progress
) -> list[str]:
    """Point standbys other than the promoted one at the new primary (primary_conninfo reloads)."""
    following = []
    for r in cfg.regions:
        if r.name in (new_primary.name, old.name) or r.name in load_state(home).get("fenced", []):
            continue
        try:
            conn = connect(r)
            with conn.cursor() as cur:
                cur.execute(
                    "alter system set primary_conninfo = %s",
                    (
                        f"host={new_primary.pg_host} port={new_primary.pg_port} user={SUPERUSER} "
                        f"application_name={r.name}",
                    ),
                )
                cur.execute("select pg_reload_conf()")
            conn.close()
            following.append(r.name)
            progress(f"{r.name}-postgres now follows {new_primary.name}")
        except psycopg2.Error as exc:
            progress(f"{r.name}-postgres unreachable ({exc}); rejoin it later")
    return following


def _last_fault(home: Path, service: str, since: float) -> float | None:
    faults = [
        e
        for e in events.read(home, kind="fault.", since=since)
        if e.get("service") == service and e["kind"] in ("fault.kill", "fault.freeze")
    ]
    return faults[-1]["ts"] if faults else None


# --- commands --------------------------------------------------------------------------------
def failover(
    cfg: XRegionConfig, home: Path, to: str, progress: Progress = _quiet, mlflow_timeout: float = 60.0
) -> dict:
    t0 = time.time()
    cfg = effective_config(cfg, home)
    target = cfg.region(to)
    nodes = probe_all(cfg, timeout=2)
    if nodes[target.name]["role"] == "primary":
        raise DRError(f"{to} is already the primary; nothing to fail over")
    if not nodes[target.name]["reachable"]:
        raise DRError(
            f"{to}-postgres is unreachable ({nodes[target.name]['error']}); start it or choose another region"
        )
    if to in load_state(home).get("fenced", []):
        raise DRError(
            f"{to} is fenced (an old primary that was never rejoined); promoting it would lose "
            f"the writes made since. Rejoin it first with `xregion dr rejoin {to}`."
        )
    old = cfg.region(current_primary(cfg, home, {k: v for k, v in nodes.items() if k != to}))
    progress(f"failover: {old.name} -> {target.name}")

    lag = replication_lag(cfg, home, old, target, nodes)
    progress(
        f"replication lag before promotion: {lag['bytes']} bytes, {lag['seconds']} s"
        + (f", {lag['commits']} committed transactions" if lag.get("commits") is not None else "")
        + f" ({lag['source']})"
    )

    fence(cfg, home, old, target, progress)
    t_promote = time.time()
    _promote(target)
    progress(f"{target.name}-postgres promoted")
    followers = _other_standbys(cfg, home, target, old, progress)
    sync_value = set_synchronous_standbys(cfg, target, followers)
    save_state(home, primary=target.name)
    t_db = database_write(target)
    progress(f"{target.name}-postgres accepts writes ({t_db - t_promote:.2f}s after promote)")

    mlflow = confirm_mlflow_writes(cfg, home, mlflow_timeout, progress)
    first = min((m["ts"] for m in mlflow.values() if m["ts"]), default=None)
    progress(f"checkpoint on {target.name} ({checkpoint(target):.2f}s) so that {old.name} can be rewound later")
    fault_ts = _last_fault(home, f"{old.name}-postgres", since=t0 - 3600)
    start = fault_ts if fault_ts and fault_ts > _last_failover_ts(home) else t0
    result = {
        "from": old.name,
        "to": target.name,
        "replication": cfg.postgres.replication,
        "lag": lag,
        "synchronous_standby_names": sync_value,
        "fenced": old.name,
        "rto_start": "fault" if start == fault_ts else "command",
        "rto_start_ts": start,
        "rto_seconds": round(first - start, 3) if first else None,
        "database_writable_seconds": round(t_db - start, 3),
        "command_seconds": round(time.time() - t0, 3),
        "promote_seconds": round(t_db - t_promote, 3),
        "mlflow": mlflow,
        "ok": all(m["ok"] is not False for m in mlflow.values()),
    }
    events.record(
        "db.failover",
        home,
        **{k: v for k, v in result.items() if k != "mlflow"},
        mlflow_ok={k: v["ok"] for k, v in mlflow.items()},
    )
    return result


def _last_failover_ts(home: Path) -> float:
    evs = [e for e in events.read(home) if e.get("kind") in ("db.failover", "db.switchover")]
    return evs[-1]["ts"] if evs else 0.0


DIVERGED = (
    b"forked off current database system timeline",
    b"is not in this server's history",
    b"ahead of the WAL flush position",
    b"does not contain minimum recovery point",
)


def _start_standby(
    sup: Supervisor, svc, primary: RegionConfig, region: str, timeout: float, progress: Progress
) -> bool:
    """Start the node as a standby; True once it streams, False as soon as it refuses the timeline."""
    log = sup.log(svc.name)
    offset = log.stat().st_size if log.exists() else 0
    try:
        sup.start(svc, progress=progress)
    except SupervisorError as exc:  # e.g. "requested timeline does not contain minimum recovery point"
        progress(f"{svc.name} does not start as a standby of {primary.name}: {str(exc).splitlines()[0]}")
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = {r["standby"]: r for r in replication_rows(primary)}
        except psycopg2.Error:
            rows = {}
        if rows.get(region, {}).get("state") == "streaming":
            return True
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read()
        if any(m in text for m in DIVERGED):
            progress(f"{region} cannot follow {primary.name}'s timeline (its WAL went past the fork point)")
            return False
        time.sleep(0.3)
    return False


def _rewind(
    sup: Supervisor,
    svc,
    home: Path,
    node: RegionConfig,
    primary: RegionConfig,
    stream_timeout: float,
    progress: Progress,
) -> bool:
    """pg_rewind the stopped node onto the primary's timeline and start it as a standby."""
    ddir = data_dir(home, node)
    sup.stop(svc.name)
    if not (ddir / "PG_VERSION").exists():
        return False
    (ddir / "standby.signal").unlink(missing_ok=True)  # crash recovery in single-user mode refuses standby mode
    # a just-promoted source's control file still names the old timeline until its first
    # checkpoint completes, and pg_rewind would then see no divergence: checkpoint it now
    checkpoint(primary)
    proc = subprocess.run(
        [
            str(PG_BIN / "pg_rewind"),
            "--target-pgdata",
            str(ddir),
            "--source-server",
            f"host={primary.pg_host} port={primary.pg_port} user={SUPERUSER} dbname=postgres",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        **pg_user_kwargs(),
    )
    detail = (proc.stdout + proc.stderr).strip()
    make_standby_config(home, node, primary)  # whatever happened, the node stays fenced
    progress(f"pg_rewind: {'ok' if proc.returncode == 0 else 'failed'}: {detail.splitlines()[-1] if detail else ''}")
    if proc.returncode != 0:
        return False
    if _start_standby(sup, svc, primary, node.name, stream_timeout, progress):
        return True
    sup.stop(svc.name)
    return False


def rejoin(
    cfg: XRegionConfig,
    home: Path,
    region: str,
    progress: Progress = _quiet,
    allow_basebackup: bool = True,
    stream_timeout: float = 60.0,
) -> dict:
    """Turn ``region``'s node into a streaming standby of the current primary."""
    t0 = time.time()
    steps: list[str] = []
    outer = progress

    def progress(msg: str) -> None:  # noqa: F811 - keep what happened for the result and the event log
        steps.append(msg)
        outer(msg)

    cfg = effective_config(cfg, home)
    node = cfg.region(region)
    nodes = probe_all(cfg, timeout=2)
    prim_name = current_primary(cfg, home, {k: v for k, v in nodes.items() if k != region})
    if prim_name == region:
        raise DRError(f"{region} is the current primary; fail over to another region before rejoining it")
    primary = cfg.region(prim_name)
    if nodes[prim_name]["role"] != "primary":
        raise DRError(f"the current primary {prim_name} is not reachable as a primary ({nodes[prim_name]['error']})")
    sup = Supervisor(home)
    svc = pg.service(cfg, node, home)
    ddir = data_dir(home, node)

    if nodes[region]["role"] == "primary":
        progress(f"[warning] {region} accepted writes as a second primary; pg_rewind discards them")
        sup.stop(svc.name)
    rows = {r["standby"]: r for r in replication_rows(primary)}
    method, ok = "follow", False
    if nodes[region]["role"] == "standby" and rows.get(region, {}).get("state") == "streaming":
        ok = True  # it already follows the new timeline: Postgres refuses a timeline it diverged from
        progress(f"{region} already streams from {prim_name}")
    elif (ddir / "PG_VERSION").exists() and nodes[region]["role"] != "primary":
        # a node whose WAL ends at or before the fork point follows the new timeline as it is
        sup.stop(svc.name)
        make_standby_config(home, node, primary)
        ok = _start_standby(sup, svc, primary, region, min(stream_timeout, 20.0), progress)
        if not ok:
            sup.stop(svc.name)
    if not ok:
        ok = _rewind(sup, svc, home, node, primary, stream_timeout, progress)
        method = "pg_rewind"
    if not ok:
        if not allow_basebackup:
            raise DRError(f"{region} cannot follow {prim_name} even after pg_rewind (see {sup.log(svc.name)})")
        method = "pg_basebackup"
        progress(f"{region}: fresh base backup from {prim_name}")
        shutil.rmtree(ddir, ignore_errors=True)
        prepare_dir(ddir)
        pg.run_pg(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                primary.pg_host,
                "-p",
                str(primary.pg_port),
                "-U",
                SUPERUSER,
                "-D",
                str(ddir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            "pg_basebackup",
        )
        make_standby_config(home, node, primary)
        if not _start_standby(sup, svc, primary, region, 120.0, progress):
            raise DRError(
                f"{region} does not stream from {prim_name} even after a fresh base backup; see {sup.log(svc.name)}"
            )
    progress(f"{region} streams from {prim_name} ({method})")
    fenced = [f for f in load_state(home).get("fenced", []) if f != region]
    save_state(home, fenced=fenced, primary=prim_name)
    rows = {r["standby"]: r for r in replication_rows(primary)}
    sync_value = set_synchronous_standbys(cfg, primary, sorted(n for n, r in rows.items() if r["state"] == "streaming"))
    result = {
        "region": region,
        "primary": prim_name,
        "method": method,
        "synchronous_standby_names": sync_value,
        "seconds": round(time.time() - t0, 3),
        "steps": steps,
    }
    events.record("db.rejoin", home, **result)
    return result


def switchover(
    cfg: XRegionConfig,
    home: Path,
    to: str,
    progress: Progress = _quiet,
    catchup_timeout: float = 60.0,
    mlflow_timeout: float = 60.0,
) -> dict:
    """Planned change of primary with zero loss: nothing is promoted before it has every byte."""
    t0 = time.time()
    cfg = effective_config(cfg, home)
    target = cfg.region(to)
    nodes = probe_all(cfg, timeout=2)
    old_name = current_primary(cfg, home, nodes)
    if old_name == to:
        raise DRError(f"{to} is already the primary")
    old = cfg.region(old_name)
    if nodes[old_name]["role"] != "primary":
        raise DRError(f"the primary {old_name} is not reachable: use `xregion dr failover --to {to}`")
    rows = {r["standby"]: r for r in replication_rows(old)}
    if rows.get(to, {}).get("state") != "streaming":
        raise DRError(f"{to} is not streaming from {old_name} ({rows.get(to)}); a switchover needs a healthy standby")
    lag = rows[to]
    progress(f"switchover: {old_name} -> {to} (lag now {lag['lag_bytes']} bytes, {lag['lag_seconds']} s)")

    sup = Supervisor(home)
    svc_old = pg.service(cfg, old, home)
    t_stop = time.time()
    sup.stop(svc_old.name)  # fast shutdown: walsenders send everything up to the shutdown checkpoint first
    final = controldata(data_dir(home, old))
    if final.get("Database cluster state") != "shut down":
        sup.start(svc_old)
        raise DRError(
            f"{old_name} did not shut down cleanly ({final.get('Database cluster state')}); restarted it, "
            f"switchover abandoned"
        )
    shutdown_lsn = final["Latest checkpoint location"]
    deadline = time.monotonic() + catchup_timeout
    tgt = probe(target)
    while time.monotonic() < deadline:
        tgt = probe(target)
        if (lsn_int(tgt["receive_lsn"]) or 0) > lsn_int(shutdown_lsn) and tgt["replay_lsn"] == tgt["receive_lsn"]:
            break
        time.sleep(0.2)
    else:
        sup.start(svc_old)
        raise DRError(
            f"{to} did not receive {old_name}'s shutdown checkpoint {shutdown_lsn} within "
            f"{catchup_timeout:.0f}s (has {tgt['receive_lsn']}); {old_name} restarted as primary, "
            f"switchover abandoned"
        )
    progress(f"{to} has all WAL up to {old_name}'s shutdown checkpoint {shutdown_lsn}: zero loss")
    make_standby_config(home, old, target)
    save_state(home, fenced=sorted(set(load_state(home).get("fenced", [])) | {old_name}))
    _promote(target)
    save_state(home, primary=to)
    followers = _other_standbys(cfg, home, target, old, progress)
    set_synchronous_standbys(cfg, target, followers)
    t_db = database_write(target)
    progress(f"{to}-postgres promoted and accepts writes ({t_db - t_stop:.2f}s of write downtime)")
    checkpoint(target)
    rejoined = rejoin(cfg, home, old_name, progress)
    mlflow = confirm_mlflow_writes(cfg, home, mlflow_timeout, progress)
    first = min((m["ts"] for m in mlflow.values() if m["ts"]), default=None)
    result = {
        "from": old_name,
        "to": to,
        "lost_bytes": 0,
        "shutdown_checkpoint": shutdown_lsn,
        "write_downtime_seconds": round((first or t_db) - t_stop, 3),
        "rejoin": rejoined,
        "command_seconds": round(time.time() - t0, 3),
        "mlflow": mlflow,
        "ok": all(m["ok"] is not False for m in mlflow.values()),
    }
    events.record("db.switchover", home, **{k: v for k, v in result.items() if k != "mlflow"})
    return result


def status(cfg: XRegionConfig, home: Path) -> dict:
    """Every node's role and position, and each standby's lag as the primary sees it."""
    eff = effective_config(cfg, home)
    nodes = probe_all(eff, timeout=2)
    state = load_state(home)
    try:
        primary = current_primary(eff, home, nodes)
    except DRError as err:
        return {"primary": None, "error": str(err), "nodes": nodes, "replication": [], "state": state}
    repl = []
    if nodes.get(primary, {}).get("role") == "primary":
        repl = replication_rows(eff.region(primary))
    for name, n in nodes.items():
        n["fenced"] = name in state.get("fenced", [])
        n["configured_role"] = cfg.region(name).role
    return {
        "primary": primary,
        "replication_mode": cfg.postgres.replication,
        "nodes": nodes,
        "replication": repl,
        "state": state,
    }
