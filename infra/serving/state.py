"""The serving control plane's state, typed: what each colour serves, what is being deployed, the
policy that judges a new version, and the file that keeps it across router restarts.

The state file (``XREGION_HOME/router/state.json``, mode 0600) is the router's memory: a restarted
router, or a restarted HAProxy, is brought back to exactly what it says.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .haproxy import SLOTS, Tuning, write_private


@dataclass
class Policy:
    """Control-plane settings (stored in the router state; env XREGION_ROUTER_<NAME> overrides)."""

    bake_s: float = 60.0  # the window after a switch in which a bad version is rolled back
    max_error_rate: float = 0.05  # model failures (server 5xx, aborts, timeouts) / requests of the new version
    max_p99_ms: float = 1000.0  # p99 of HAProxy's total time for the new version's successful requests
    min_requests: int = 20  # judge the error rate and p99 only after this many requests in the window
    max_probe_failures: int = 2  # the router's own probes (the version's input example) that may fail
    probe_interval_s: float = 0.5  # how often the router probes the new version during the bake window
    poll_s: float = 1.0  # registry poll interval
    stats_interval_s: float = 0.1  # HAProxy stats poll interval (failover detection resolution)
    start_timeout_s: float = 240.0  # a model server must answer /ping within this
    registry_timeout_s: float = 3.0  # one registry call to one region's MLflow server

    @classmethod
    def from_env(cls, base: dict | None = None) -> Policy:
        values = {**asdict(cls()), **(base or {})}
        for name, default in asdict(cls()).items():
            env = os.environ.get(f"XREGION_ROUTER_{name.upper()}")
            if env:
                values[name] = type(default)(env)
        return cls(**{k: v for k, v in values.items() if k in asdict(cls())})


@dataclass
class Server:
    """One model server: the service that runs it (embedded) and where HAProxy reaches it."""

    service: str
    host: str
    port: int

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Slot:
    """A colour's version and its server per region."""

    version: str
    servers: dict[str, Server]


@dataclass
class Pending:
    """A version being deployed to the idle colour, not yet taking traffic."""

    slot: str
    version: str
    servers: dict[str, Server]
    started: float


@dataclass
class RouterState:
    model: str
    regions: list[str]
    active: str
    slots: dict[str, Slot | None]
    mode: str = "embedded"  # embedded: the router starts model servers; external: they ask the router
    pending: Pending | None = None
    rejected: dict[str, int] = field(default_factory=dict)  # version -> when (ms) it was rolled back
    policy: Policy = field(default_factory=Policy)
    tuning: Tuning = field(default_factory=Tuning)
    api_port: int = 0
    started: float = field(default_factory=time.time)

    @property
    def idle(self) -> str:
        return next(s for s in SLOTS if s != self.active)

    def serving(self) -> Slot:
        slot = self.slots.get(self.active)
        if slot is None:
            raise ValueError(f"router state: the active colour {self.active} has no version")
        return slot

    def haproxy_servers(self) -> dict[str, dict[str, str | None]]:
        """What each colour's servers are, for the HAProxy configuration."""
        out: dict[str, dict[str, str | None]] = {s: {r: None for r in self.regions} for s in SLOTS}
        for name in SLOTS:
            slot = self.slots.get(name)
            if self.pending and self.pending.slot == name:
                slot = Slot(self.pending.version, self.pending.servers)
            for region, server in (slot.servers if slot else {}).items():
                out[name][region] = server.addr
        return out

    # --- (de)serialisation ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> RouterState:
        def slot(x: dict | None) -> Slot | None:
            return Slot(str(x["version"]), {r: Server(**s) for r, s in x["servers"].items()}) if x else None

        p = d.get("pending")
        pending = (
            Pending(p["slot"], str(p["version"]), {r: Server(**s) for r, s in p["servers"].items()}, p["started"])
            if p
            else None
        )
        return cls(
            model=d["model"],
            regions=list(d["regions"]),
            active=d["active"],
            slots={k: slot(v) for k, v in d["slots"].items()},
            mode=d.get("mode", "embedded"),
            pending=pending,
            rejected=dict(d.get("rejected", {})),
            policy=Policy.from_env(d.get("policy")),
            tuning=Tuning.from_env(d.get("tuning")),
            api_port=int(d.get("api_port", 0)),
            started=float(d.get("started", time.time())),
        )


def state_path(home: Path) -> Path:
    return Path(home) / "router" / "state.json"


def load_state(home: Path) -> RouterState | None:
    try:
        return RouterState.from_dict(json.loads(state_path(home).read_text()))
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def save_state(home: Path, state: RouterState) -> None:
    write_private(state_path(home), state.to_json())
