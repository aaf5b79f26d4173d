"""Start, health-check, stop and fault the embedded stack's processes.

Every process the stack runs is a ``Service``: a serialisable record (argv, env, user, health
check) saved as its pid file under ``XREGION_HOME/run``. Anything that starts a process
(``xregion up``, the router's model servers, HAProxy) goes through here, so ``status``, ``down``
and ``fault`` see every process whoever started it, and tests and drills never keep their own
subprocess code.

Each service runs in its own session (process group), so a signal reaches its workers too:
``kill -9`` of a region's MLflow server kills its uvicorn workers as a crashed host would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from xregion import events


class SupervisorError(RuntimeError):
    pass


class PortInUse(SupervisorError):
    pass


class StartFailed(SupervisorError):
    pass


@dataclass
class Service:
    """One supervised process and how to tell that it is healthy."""

    name: str  # unique, e.g. "a-postgres"
    region: str
    component: str  # s3 | postgres | mlflow | serving | haproxy | ...
    argv: list[str]
    listen: tuple[str, int] | None = None
    health: dict = field(default_factory=dict)  # {"type": "http"|"tcp"|"postgres", ...}
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: str | None = None
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 60.0
    lock_file: str | None = None  # a pid lock the program refuses to start over (Postgres' postmaster.pid)
    data_dir: str | None = None  # the service's own data (an S3 store's objects): what the wipe fault deletes

    @classmethod
    def from_dict(cls, data: dict) -> Service:
        data = dict(data)
        if data.get("listen"):
            data["listen"] = tuple(data["listen"])
        return cls(**data)


def check_health(svc: Service, timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, detail) from the service's declared check."""
    kind = svc.health.get("type", "tcp")
    try:
        if kind == "http":
            try:
                with urllib.request.urlopen(svc.health["url"], timeout=timeout) as resp:
                    return resp.status < 500, f"HTTP {resp.status}"
            except urllib.error.HTTPError as err:  # 4xx still proves the server answers
                return err.code < 500, f"HTTP {err.code}"
        if kind == "postgres":
            import psycopg2

            with psycopg2.connect(svc.health["dsn"], connect_timeout=max(1, int(timeout))) as conn:
                with conn.cursor() as cur:
                    cur.execute("select pg_is_in_recovery()")
                    standby = cur.fetchone()[0]
            conn.close()
            return True, "standby (in recovery)" if standby else "primary (read-write)"
        host, port = svc.listen or (svc.health["host"], svc.health["port"])
        with socket.create_connection((host, port), timeout=timeout):
            return True, "accepting connections"
    except Exception as exc:  # a health check reports, it never raises
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our own dead child (else nothing happens)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def _clear_zombie_lock(lock: Path) -> None:
    """A process killed -9 whose parent never reaps it (a non-reaping init) stays a zombie, , and
    a program such as Postgres refuses to start while the pid in its lock file exists: a zombie's lock is stale."""
    try:
        pid = int(lock.read_text().split()[0])
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            lock.unlink()
    except (OSError, ValueError, IndexError, psutil.Error):
        pass


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Supervisor:
    def __init__(self, home: Path):
        self.home = Path(home)
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"

    # --- records -------------------------------------------------------------------------
    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _record(self, name: str) -> dict | None:
        try:
            return json.loads(self.pidfile(name).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def known(self) -> list[Service]:
        """Every service with a pid file, started by anyone."""
        out = []
        for path in sorted(self.run_dir.glob("*.json")):
            rec = self._record(path.stem)
            if rec:
                out.append(Service.from_dict(rec["service"]))
        return out

    def process(self, name: str) -> psutil.Process | None:
        """The live process of a service, or None (a pid reused by another program does not count)."""
        rec = self._record(name)
        if not rec:
            return None
        try:
            proc = psutil.Process(rec["pid"])
            if abs(proc.create_time() - rec["create_time"]) > 0.5:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(proc.pid)  # our own dead child: a zombie's pid still looks alive to others (postmaster.pid)
                return None
            return proc
        except psutil.Error:
            return None

    def state(self, name: str) -> str:
        """running | frozen | dead (pid file but no process) | stopped (no pid file)."""
        if not self.pidfile(name).exists():
            return "stopped"
        proc = self.process(name)
        if proc is None:
            return "dead"
        try:
            return "frozen" if proc.status() == psutil.STATUS_STOPPED else "running"
        except psutil.Error:
            return "dead"

    # --- lifecycle -----------------------------------------------------------------------
    def spawn(self, svc: Service) -> psutil.Process:
        """Start the process without waiting for health; a live one is left alone."""
        proc = self.process(svc.name)
        if proc is not None:
            return proc
        self.pidfile(svc.name).unlink(missing_ok=True)  # stale after a crash
        if svc.lock_file:
            _clear_zombie_lock(Path(svc.lock_file))
        if svc.listen and not port_free(*svc.listen):
            raise PortInUse(
                f"{svc.name}: port {svc.listen[1]} on {svc.listen[0]} is already in use by another program "
                f"(or a stack with another XREGION_HOME). Stop it, or change the port in the regions file."
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log(svc.name), "ab")
        logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(svc.argv)}\n".encode())
        logf.flush()
        env = {**os.environ, **svc.env}
        kwargs = {}
        if svc.user and os.geteuid() == 0:
            kwargs = {"user": svc.user, "group": svc.user, "extra_groups": []}
        try:
            popen = subprocess.Popen(
                svc.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=svc.cwd,
                start_new_session=True,
                **kwargs,
            )
        except OSError as exc:
            raise StartFailed(f"{svc.name}: cannot run {svc.argv[0]}: {exc.strerror}") from None
        finally:
            logf.close()
        return self.adopt(svc, popen.pid)

    def adopt(self, svc: Service, pid: int) -> psutil.Process:
        """Record a process started elsewhere (a client forked by a load generator) as ``svc``, so
        that ``fault``, ``stop`` and ``status`` reach it like any other service."""
        proc = psutil.Process(pid)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rec = {"pid": pid, "create_time": proc.create_time(), "service": asdict(svc)}
        tmp = self.pidfile(svc.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(self.pidfile(svc.name))
        return proc

    def wait_healthy(self, services: Iterable[Service], progress: Callable[[str], None] | None = None) -> None:
        """Wait until every service is healthy; on failure raise with the failing one's log tail."""
        pending = {s.name: s for s in services}
        deadline = {n: time.monotonic() + s.start_timeout for n, s in pending.items()}
        while pending:
            for name, svc in list(pending.items()):
                if self.process(name) is None:
                    raise StartFailed(
                        f"{name} exited during start-up. Last lines of {self.log(name)}:\n{log_tail(self.log(name))}"
                    )
                ok, detail = check_health(svc, timeout=1.0)
                if ok:
                    del pending[name]
                    if progress:
                        progress(f"{name} healthy ({detail})")
                elif time.monotonic() > deadline[name]:
                    raise StartFailed(
                        f"{name} not healthy after {svc.start_timeout:.0f}s ({detail}). "
                        f"Last lines of {self.log(name)}:\n{log_tail(self.log(name))}"
                    )
            if pending:
                time.sleep(0.2)

    def start(self, *services: Service, progress=None) -> None:
        for svc in services:
            self.spawn(svc)
        self.wait_healthy(services, progress)

    def signal(self, name: str, sig: int) -> bool:
        """Send a signal to every process of the service; False if it is not running.

        "Every process" is the leader's session group plus its descendants: Postgres children
        call setsid(), so a group signal alone would leave its backends serving a frozen node.
        """
        proc = self.process(name)
        if proc is None:
            return False
        for p in self.tree(proc.pid, proc.create_time()):
            self._send(p, sig)
        return True

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """Stop a service and every process of it; idempotent."""
        rec = self._record(name)
        if not rec:
            return
        proc = self.process(name)
        if proc is not None:
            svc = Service.from_dict(rec["service"])
            tree = self.tree(proc.pid, proc.create_time())
            for p in tree:  # a frozen process cannot act on SIGTERM
                self._send(p, signal.SIGCONT)
            try:  # the group: a server's workers share it (Postgres children leave it and follow the postmaster)
                os.killpg(proc.pid, svc.stop_signal)
            except (ProcessLookupError, PermissionError):
                pass
            _, alive = psutil.wait_procs(tree, timeout=timeout)
        else:
            # the leader is gone (kill -9) but its group may live on (workers)
            alive = self.tree(rec["pid"], rec["create_time"])
        for p in alive:
            self._send(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        self.pidfile(name).unlink(missing_ok=True)

    @staticmethod
    def tree(pid: int, create_time: float) -> list[psutil.Process]:
        """Every live process of the service whose leader was started as (``pid``, ``create_time``):
        the leader, its descendants and its process group (pgid == leader pid).

        A pid file may be stale: if ``pid`` now names another program (another create time), the
        service is entirely gone, because Linux never hands out a pid still in use as a process
        group id, so nothing is returned and nothing unrelated is signalled. Zombies are already
        dead (only their parent can reap them) and are left out.
        """
        _reap(pid)
        procs: dict[int, psutil.Process] = {}
        try:
            leader = psutil.Process(pid)
            if abs(leader.create_time() - create_time) > 0.5:
                return []
            procs[pid] = leader
            procs.update({c.pid: c for c in leader.children(recursive=True)})
        except psutil.Error:
            pass
        for p in psutil.process_iter():
            try:
                if p.pid not in procs and os.getpgid(p.pid) == pid and p.create_time() >= create_time - 0.5:
                    procs[p.pid] = p
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        alive = []
        for p in procs.values():
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        return alive

    def leftovers(self, name: str) -> list[psutil.Process]:
        """Live processes of a service whose leader is dead (workers a kill -9 left behind)."""
        rec = self._record(name)
        if not rec or self.process(name) is not None:
            return []
        return self.tree(rec["pid"], rec["create_time"])

    @staticmethod
    def _send(proc: psutil.Process, sig: int) -> None:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass

    def stop_all(self, progress=None) -> list[str]:
        """Stop every known service, servers that depend on others first."""
        order = {"serving": 0, "haproxy": 0, "router": 0, "mlflow": 1, "s3": 2, "postgres": 3}
        stopped = []
        for svc in sorted(self.known(), key=lambda s: (order.get(s.component, 0), s.name)):
            self.stop(svc.name)
            stopped.append(svc.name)
            if progress:
                progress(f"stopped {svc.name}")
        return stopped

    # --- faults --------------------------------------------------------------------------
    def fault(self, action: str, services: list[Service], progress=None) -> list[str]:
        """kill (SIGKILL) | freeze (SIGSTOP) | thaw (SIGCONT) | restart | wipe (stop, delete the
        service's data directory, start it empty: a lost disk); each recorded in the event log."""
        sigs = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP, "thaw": signal.SIGCONT}
        if action == "wipe" and (bad := [s.name for s in services if not s.data_dir]):
            raise SupervisorError(f"wipe: {', '.join(bad)} keep no data of their own (only S3 stores do)")
        done = []
        for svc in services:
            if action not in ("restart", "wipe") and self.process(svc.name) is None:
                if progress:
                    progress(f"{svc.name} is not running; nothing to {action}")
                continue
            events.record(f"fault.{action}", self.home, service=svc.name, region=svc.region, component=svc.component)
            if action in ("restart", "wipe"):
                self.stop(svc.name)
                if action == "wipe":
                    shutil.rmtree(svc.data_dir, ignore_errors=True)
                self.start(svc, progress=progress)
            else:
                self.signal(svc.name, sigs[action])
            done.append(svc.name)
        return done
