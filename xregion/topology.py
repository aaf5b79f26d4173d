"""Which region is primary today: the regions file's roles, corrected by Patroni's leader.

The regions file says which region was *configured* primary; after a failover that is no longer
true. Patroni knows (its leader lock in etcd), and every Patroni answers ``GET /cluster`` with
the whole cluster's view. ``effective_config`` is the regions file with the roles of today, so
drills, DR commands and the router agree on who is primary. No state file: when no Patroni
answers, the regions file's roles are all there is.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from .config import XRegionConfig


def leader(cfg: XRegionConfig, timeout: float = 2.0) -> str | None:
    """The member holding Patroni's leader lock, from the first region whose Patroni answers."""
    for r in cfg.regions:
        if not r.patroni_url:
            continue
        try:
            with urllib.request.urlopen(f"{r.patroni_url}/cluster", timeout=timeout) as resp:
                view = json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            continue
        for m in view.get("members", []):
            if m.get("role") in ("leader", "standby_leader"):
                return m.get("name")
        return None  # Patroni answered: nobody holds the lock right now (a failover in progress)
    return None


def effective_config(cfg: XRegionConfig, home: Path | None = None) -> XRegionConfig:
    """The regions file with today's roles: Patroni's leader is the primary (``home`` is unused,
    kept for callers written when the roles came from a state file)."""
    primary = leader(cfg)
    if not primary or primary == cfg.primary.name or primary not in cfg.by_name:
        return cfg
    regions = [{**r.model_dump(), "role": "primary" if r.name == primary else "standby"} for r in cfg.regions]
    return cfg.with_changes(regions=regions)
