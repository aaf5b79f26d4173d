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
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import psutil

from xregion import events
from xregion.net import bindable

from .service import (  # noqa: F401 (the supervisor's public API)
    PortInUse,
    Service,
    StartFailed,
    SupervisorError,
    check_health,
    log_tail,
)


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our own dead child (else nothing happens)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to exit; returns those still alive. A zombie has exited:
    psutil.wait_procs would wait for the reaping, which for a process not our own child is a
    non-reaping or slow init's business (here it took 2-3 s per service)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _clear_zombie_lock(lock: Path) -> None:
    """A process killed -9 whose parent never reaps it (a non-reaping init) stays a zombie, , and
    a program such as Postgres refuses to start while the pid in its lock file exists: a zombie's lock is stale."""
    try:
        pid = int(lock.read_text().split()[0])
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            lock.unlink()
    except (OSError, ValueError, IndexError, psutil.Error):
        pass


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
        if svc.listen and not bindable(*svc.listen):
            raise PortInUse(
                f"{svc.name}: port {svc.listen[1]} on {svc.listen[0]} is already in use by another program "
                f"(or a stack with another XREGION_HOME). Stop it, or change the port in the regions file."
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log(svc.name), "ab")
        logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(svc.argv)}\n".encode())
        logf.flush()
        env = svc.resolved_env()
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
        self._write_record(svc.name, {"pid": pid, "create_time": proc.create_time(), "service": asdict(svc)})
        return proc

    def _write_record(self, name: str, rec: dict) -> None:
        """Pid files are 0600: they say how to restart a service, which nobody else needs to read."""
        tmp = self.run_dir / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(rec, indent=1))
        tmp.replace(self.pidfile(name))

    def spawn_detached(self, svc: Service) -> None:
        """Spawn through a short-lived intermediate process, so that the service is nobody's child:
        stopping (or killing) whoever asked for it (the router starts model servers) must not take
        it along, since the supervisor stops a service's whole process tree."""
        import sys

        out = subprocess.run(
            [sys.executable, "-m", "xregion.infra.embedded.spawn", str(self.home)],
            input=json.dumps(asdict(svc)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
            raise StartFailed(f"{svc.name}: spawn failed: {last}")

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait for a service that is this process's own child to exit; its exit code, or None if it
        still runs after ``timeout`` (or is not our child: then nobody but its parent knows)."""
        rec = self._record(name)
        if not rec:
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(rec["pid"], os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def rename(self, old: str, new: str) -> None:
        """Give a running service another name (its pid file and log follow; the process is untouched)."""
        rec = self._record(old)
        if rec is None:
            raise SupervisorError(f"no service {old!r} to rename")
        rec["service"]["name"] = new
        self._write_record(new, rec)
        self.pidfile(old).unlink(missing_ok=True)
        if self.log(old).exists():
            if self.log(new).exists():
                self.log(new).replace(self.log(new).with_suffix(".prev.log"))
            self.log(old).replace(self.log(new))

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
            alive = wait_gone(tree, timeout)
        else:
            # the leader is gone (kill -9) but its group may live on (workers)
            alive = self.tree(rec["pid"], rec["create_time"])
        for p in alive:
            self._send(p, signal.SIGKILL)
        wait_gone(alive, 5)
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
