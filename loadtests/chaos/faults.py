"""The faults of a chaos trial: a schedule derived from the trial's seed, injected through the
supervisor (real kill -9 and SIGSTOP/SIGCONT, recorded in the event log), and the heal after it.

Targets: either region's S3 store, the replicator service (``xregion replicate run``), either
region's MLflow server (its artifact proxy and its own replicator), and a client process killed
in the middle of a write. A killed service is restarted and a frozen one thawed after a hold, as
an orchestrator would; a killed client stays dead (its last operation is indeterminate).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from xregion.infra.embedded.supervisor import Service, Supervisor

log = logging.getLogger(__name__)

# (target, weight): the stores and the replicator most, the MLflow servers (slow to restart) less
TARGETS = [("a-s3", 4), ("b-s3", 5), ("replicator", 4), ("a-mlflow", 1), ("b-mlflow", 1), ("client", 3)]


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the workload starts
    action: str  # kill | freeze
    target: str  # a key of TARGETS
    hold: float  # seconds until the restart (kill) or the thaw (freeze)

    @property
    def kind(self) -> str:
        component = self.target.split("-", 1)[-1]
        return f"{self.action}:{component}"


def plan_faults(seed: int, duration: float, max_faults: int = 4) -> list[Fault]:
    """The trial's faults, from the seed alone; never two at once on one target."""
    rng = random.Random(f"chaos-faults-{seed}")
    names, weights = zip(*TARGETS, strict=True)
    planned = []
    for _ in range(rng.randint(1, max_faults)):
        target = rng.choices(names, weights)[0]
        # an MLflow server takes seconds to restart: mostly frozen, sometimes killed
        kill = {"client": 1.0, "a-mlflow": 0.3, "b-mlflow": 0.3}.get(target, 0.5)
        action = "kill" if rng.random() < kill else "freeze"
        planned.append(Fault(round(rng.uniform(0.1, duration), 3), action, target, round(rng.uniform(0.3, 2.0), 3)))
    out: list[Fault] = []
    for f in sorted(planned, key=lambda f: f.at):
        if all(g.target != f.target or g.at + g.hold < f.at for g in out):
            out.append(f)
    return out


@dataclass
class Injected:
    fault: Fault
    applied: bool
    service: str = ""
    note: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self.fault), "kind": self.fault.kind, "applied": self.applied, "service": self.service}

    def describe(self) -> str:
        what = f"+{self.fault.at:.3f}s {self.fault.action} {self.service or self.fault.target}"
        if self.fault.target != "client":  # a killed client stays dead
            what += f" for {self.fault.hold:.1f}s"
        return what + (f" ({self.note})" if self.note else "")


class Injector:
    """Runs a schedule: one thread per fault, each applies, holds, then restarts or thaws."""

    def __init__(
        self,
        sup: Supervisor,
        services: dict[str, Service],
        clients: Callable[[], list[tuple[Service, Path]]],
    ):
        self.sup, self.services, self.clients = sup, services, clients
        self.injected: list[Injected] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, schedule: list[Fault], t0: float) -> None:
        for fault in schedule:
            t = threading.Thread(target=self._run, args=(fault, t0), name=f"fault-{fault.target}", daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self, fault: Fault, t0: float) -> None:
        time.sleep(max(0.0, t0 + fault.at - time.monotonic()))
        try:
            record = self._client(fault) if fault.target == "client" else self._service(fault)
        except Exception as exc:  # a fault that cannot be applied is reported, never fatal
            log.warning("fault %s not applied: %s", fault, exc)
            record = Injected(fault, False, note=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.injected.append(record)

    def _service(self, fault: Fault) -> Injected:
        svc = self.services[fault.target]
        done = self.sup.fault(fault.action, [svc])
        time.sleep(fault.hold)
        if fault.action == "freeze":
            self.sup.fault("thaw", [svc])
        else:
            self.sup.stop(svc.name)  # workers a kill -9 of the leader left behind
            self.sup.spawn(svc)  # restarted as an orchestrator would; health is awaited at heal
        return Injected(fault, bool(done), svc.name, "" if done else "was not running")

    def _client(self, fault: Fault) -> Injected:
        """Kill a client in the middle of a write: one whose last history line invokes a put or delete."""
        deadline = time.monotonic() + 1.5
        victim = None
        while victim is None and time.monotonic() < deadline:
            live = [(s, h) for s, h in self.clients() if self.sup.process(s.name) is not None]
            if not live:
                return Injected(fault, False, note="no client running")
            writing = [(s, h) for s, h in live if _writing(h)]
            victim = writing[0] if writing else None
            if victim is None:
                time.sleep(0.01)
        victim = victim or live[0]
        done = self.sup.fault("kill", [victim[0]])
        note = "in the middle of a write" if _writing(victim[1]) else "between operations"
        return Injected(fault, bool(done), victim[0].name, note)

    def kinds(self) -> Counter:
        return Counter(i.fault.kind for i in self.injected if i.applied)


def _writing(history: Path) -> bool:
    try:
        last = history.read_text().splitlines()[-1]
        ev = json.loads(last)
    except (OSError, IndexError, json.JSONDecodeError):
        return False
    return ev.get("type") == "invoke" and ev.get("f") in ("put", "delete")


def heal(sup: Supervisor, services: list[Service], progress=None) -> list[str]:
    """Every service running and healthy again: thaw the frozen, restart the dead. Returns what it did."""
    did = []
    for svc in services:
        state = sup.state(svc.name)
        if state == "frozen":
            sup.fault("thaw", [svc])
            did.append(f"thawed {svc.name}")
        elif state != "running":
            sup.stop(svc.name)
            sup.spawn(svc)
            did.append(f"restarted {svc.name}")
    sup.wait_healthy(services, progress)
    return did
