"""The one event log: faults, failovers, switches, rollbacks and promotions, each timestamped.

An append-only JSON-lines file under XREGION_HOME. Drills read it to compute RTO, so every
writer uses ``record`` and every reader ``read``, and nobody invents a second format.

Every kind is declared in ``KINDS`` below with the fields it carries (as Locust declares its
``Events``): a serving server going down and a database promotion are different kinds, so a
reader never takes one for the other. Recording an undeclared kind is an error.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from .home import xregion_home

KINDS: dict[str, str] = {
    # injected faults (the supervisor): what was done to which process
    "fault.kill": "SIGKILL of a service's whole process tree: service, region, component",
    "fault.freeze": "SIGSTOP of a service's whole process tree: service, region, component",
    "fault.thaw": "SIGCONT after a freeze: service, region, component",
    "fault.restart": "stop and start of a service: service, region, component",
    "fault.wipe": "a region's storage lost (stopped, data deleted, restarted empty): service, region, component",
    # the serving front door (the router)
    "serving.started": "model servers, HAProxy and the router started: model, version, regions, frontend",
    "serving.server_down": "HAProxy's checks took a model server out: region, server, service, version, "
    "check_status, detected_at, fault_at, fault, detection_s",
    "serving.server_up": "a model server back in rotation: region, server, service, version, down_for_s",
    "serving.switch": "traffic moved to a new version: from_version, to_version, regions, backend, switched_at, "
    "prepare_s, bake_s",
    "serving.switch_failed": "a new version never took traffic (unhealthy or failed its smoke test): version, error",
    "serving.switch_aborted": "a switch abandoned because the router restarted mid-way: version, reason",
    "serving.bake_passed": "a new version survived its bake window: version, previous_version, backend, baked_s, "
    "requests, errors, probes, probe_failures",
    "serving.rollback": "traffic and registry back to the previous version: from_version, to_version, reason, "
    "switched_at, detected_at, switched_back_at, registry_rolled_back_at, rollback_s, registry_error",
    "serving.reapplied": "the router re-applied its state to a restarted HAProxy: active, servers",
    # the gated registry
    "registry.promotion": "a version moved to the production stage or alias: model, version, stage or alias, "
    "who, reason, objects, prefix",
    "registry.gate_refused": "a promotion refused by the replication gate: model, version, target, prefix, problems",
    "registry.rollback": "release manager's rollback: model, from_version, to_version, reason, who, source",
    # the database (dr)
    "db.failover": "a standby promoted because the primary was lost: from, to, and the measured figures",
    "db.switchover": "a planned change of primary: from, to, and the measured figures",
    "db.rejoin": "an old primary back as a standby: region, method",
    "db.leader": "Patroni's leader changed, as a drill's probe saw it: leader, previous",
    "db.backup": "a database backup stored: id, region, and its figures",
    "db.restore": "a backup restored: id, and its figures",
    "region.restore": "a lost region brought back by `xregion region restore`: region and what was done",
    # drills
    "drill.step": "a scheduled drill step ran: step",
    "drill.fault": "a drill's non-process fault (e.g. promoting a bad model): action and details",
}


def log_path(home: Path | None = None) -> Path:
    return (home or xregion_home()) / "events.jsonl"


def record(kind: str, home: Path | None = None, **fields) -> dict:
    """Append one event of a declared ``kind`` and return it."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}: declare it in xregion.events.KINDS")
    event = {"ts": time.time(), "kind": kind, **fields}
    path = log_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(event, default=str) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # several processes (router, drills, CLI) append concurrently
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return event


def read(home: Path | None = None, kind: str | None = None, since: float = 0.0) -> list[dict]:
    """Events at or after ``since``; ``kind`` matches a kind or a family prefix ("fault." or "serving.")."""
    path = log_path(home)
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line after a kill -9 of a writer
        k = event.get("kind", "")
        if event.get("ts", 0) >= since and (kind is None or k == kind or (kind.endswith(".") and k.startswith(kind))):
            events.append(event)
    return events
