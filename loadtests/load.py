"""Locust as supervised processes: headless, one local process or a master and N workers on loopback.

Locust runs in its own processes because it monkey-patches the interpreter for gevent: the fault
schedule (psycopg2, subprocesses, a database failover that blocks for seconds) must not stall the
users' greenlets, or the drill would measure itself. They are Supervisor services (component
``locust``), so ``xregion status`` and ``down`` see them and a drill never leaves one behind.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xregion.errors import XRegionError
from xregion.infra.embedded.supervisor import Service, Supervisor, log_tail
from xregion.net import free_port

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class LoadError(XRegionError, RuntimeError):
    """Locust did not start or run as asked; the message points at its logs."""


@dataclass
class LoadSpec:
    host: str  # the front door Locust's HttpUsers talk to
    users: int
    spawn_rate: float
    duration: float
    workers: int = 0  # 0: one local process; N: a master and N workers
    classes: list[str] = field(default_factory=lambda: ["ServingUser"])
    xr_args: list[str] = field(default_factory=list)  # --xr-* options of locustfile.py
    env: dict[str, str] = field(default_factory=dict)


class LocustLoad:
    def __init__(self, home: Path, run_dir: Path, spec: LoadSpec):
        self.sup, self.run_dir, self.spec = Supervisor(home), Path(run_dir), spec
        self.services = self._services()

    def _services(self) -> list[Service]:
        s = self.spec
        common = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *s.xr_args]
        run = [
            "--headless",
            "--host",
            s.host,
            "-u",
            str(s.users),
            "-r",
            str(s.spawn_rate),
            "-t",
            f"{int(round(s.duration))}s",
            "--stop-timeout",
            "3",
            "--only-summary",
            "--csv",
            str(self.run_dir / "locust"),
            *s.classes,
        ]

        def svc(name: str, argv: list[str]) -> Service:
            return Service(
                name=name,
                region="global",
                component="locust",
                argv=argv,
                env=s.env,
                cwd=str(self.run_dir),
                stop_signal=15,
            )

        if s.workers <= 0:
            return [svc("locust", common + run)]
        port = free_port()
        master = [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(s.workers),
            "--expect-workers-max-wait",
            "60",
        ]
        worker = ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
        return [svc("locust-master", common + run + master)] + [
            svc(f"locust-worker-{i}", common + worker) for i in range(1, s.workers + 1)
        ]

    def start(self) -> None:
        for svc in self.services:
            self.sup.stop(svc.name)  # a previous drill's, if it was killed mid-way
            self.sup.spawn(svc)

    def wait_started(self, timeout: float = 90.0) -> float:
        """Wall time at which the test started (Locust's test_start in the first process that ran it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            marks = sorted(self.run_dir.glob("started-*.json"))
            if marks:
                return min(json.loads(m.read_text())["ts"] for m in marks)
            if any(self.sup.process(s.name) is None for s in self.services):
                raise LoadError(f"Locust exited before the test started:\n{self.tail()}")
            time.sleep(0.1)
        raise LoadError(f"Locust did not start within {timeout:.0f}s:\n{self.tail()}")

    def wait(self, timeout: float) -> list[int | None]:
        """Exit codes once every process ended (None for one killed at the timeout)."""
        deadline = time.monotonic() + timeout
        codes = [self.sup.wait_exit(s.name, max(0.1, deadline - time.monotonic())) for s in self.services]
        self.stop()
        return codes

    def stop(self) -> None:
        for svc in self.services:
            self.sup.stop(svc.name, timeout=10)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(f"--- {self.sup.log(s.name)}\n{log_tail(self.sup.log(s.name), lines)}" for s in self.services)
