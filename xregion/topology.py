"""Which region is primary today: the regions file's roles, corrected by the last failover.

The regions file says which region was *configured* primary; after a failover that is no longer
true. ``XREGION_HOME/dr-state.json`` keeps what Postgres cannot tell when a node is down: the
current primary and the fenced nodes. ``effective_config`` turns the regions file plus that state
into the config with today's roles, so ``xregion up``, drills and every ``xregion dr`` command
agree on who is primary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import XRegionConfig

STATE_FILE = "dr-state.json"


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def load_state(home: Path) -> dict:
    try:
        return json.loads(state_path(home).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def save_state(home: Path, **changes) -> dict:
    state = {**load_state(home), **changes, "updated": time.time()}
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)
    return state


def effective_config(cfg: XRegionConfig, home: Path) -> XRegionConfig:
    """The regions file with the roles of today: the primary recorded by the last failover."""
    primary = load_state(home).get("primary")
    if not primary or primary == cfg.primary.name or primary not in cfg.by_name:
        return cfg
    regions = [{**r.model_dump(), "role": "primary" if r.name == primary else "standby"} for r in cfg.regions]
    return cfg.with_changes(regions=regions)
