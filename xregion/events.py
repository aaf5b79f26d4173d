"""The one event log: failovers, rollbacks, promotions and injected faults, each timestamped.

An append-only JSON-lines file under XREGION_HOME. Drills read it to compute RTO, so every
writer uses ``record`` and every reader ``read`` and nobody invents a second format.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from .home import xregion_home


def log_path(home: Path | None = None) -> Path:
    return (home or xregion_home()) / "events.jsonl"


def record(kind: str, home: Path | None = None, **fields) -> dict:
    """Append one event (``kind`` such as fault.kill, failover, rollback, promotion) and return it."""
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
    path = log_path(home)
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line after a kill -9 of a writer
        if event.get("ts", 0) >= since and (kind is None or event.get("kind", "").startswith(kind)):
            events.append(event)
    return events
