"""The serving control plane (`xregion router`): model servers per region behind HAProxy, following
the registry's production version with blue/green switches and automatic rollback.

``start_serving`` starts, as Supervisor Services:

* per region ``<region>-serving`` (component ``serving``): ``mlflow models serve -m
  models:/<model>/<version> --env-manager local -w 1`` on the region's ``serving_url`` port, with
  ``MLFLOW_TRACKING_URI`` = the region's MLflow server, so each region loads the model through its
  own server and its own S3 region. The version is pinned (not ``@champion``): a restarted
  server must come back as the version HAProxy routes to it, never silently as a newer one;
* ``haproxy`` (component ``haproxy``, region = the primary's name, so ``xregion fault kill <primary>
  haproxy`` reaches it): the front door (``infra/haproxy.py``);
* ``router`` (component ``router``, region = the primary's name): ``xregion router run``, the loop
  below, with its metrics on a loopback port chosen at start (``/metrics``, ``/status``).

The loop (``Router``):

* every ``stats_interval_s`` reads HAProxy's ``show stat``: a server of the serving colour going
  DOWN is a ``failover`` event (region, server, service, HAProxy's check status, the time it was
  seen, and ``detection_s`` from the latest injected fault of that service in the event log),
  coming back UP a ``recovery``;
* every ``poll_s`` asks the registry for the production version (the production alias, else the
  newest version in the production stage). A new one: start ``<region>-serving-next`` for it in
  every region on another port, wait until every one answers ``/ping`` and HAProxy sees it UP,
  then switch the frontend to the other colour with one runtime-API command (``switch`` event).
  The old servers stay warm through the bake window;
* during the bake window, if the new colour's error rate (5xx / requests, from HAProxy's
  counters) or its p99 latency (from HAProxy's per-request log, sent to the router's socket)
  crosses the limits after ``min_requests`` requests, it switches back at once, stops the new
  servers, rolls the registry back (previous version to production and the alias, the bad one
  archived, the reason recorded by the registry plugin) and records a ``rollback`` event. A
  rolled-back version is not deployed again unless it is promoted again. When the window ends
  cleanly the old servers stop and the new ones become ``<region>-serving`` (``bake.passed``).

Without a state file (compose, Kubernetes: HAProxy and the model servers are the platform's) the
router only watches: failover/recovery events and metrics from the runtime API named by
``XREGION_HAPROXY_RUNTIME_API``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from xregion.infra.embedded.stack import BIN, child_env
from xregion.infra.embedded.supervisor import Service, StartFailed, Supervisor, SupervisorError, check_health

from xregion import events
from xregion.config import XRegionConfig

from . import haproxy
from .haproxy import SLOTS, RuntimeAPI, RuntimeAPIError, Tuning, int0

log = logging.getLogger("xregion.router")


@dataclass
class Policy:
    """Control-plane settings (stored in the router state; env XREGION_ROUTER_<NAME> overrides)."""

    bake_s: float = 60.0  # the window after a switch in which a bad version is rolled back
    max_error_rate: float = 0.05  # 5xx / requests of the new version
    max_p99_ms: float = 1000.0  # p99 of HAProxy's total request time for the new version
    max_4xx_increase: float = 0.10  # 4xx rate of the new version minus the old one's (MLflow answers 400
    # when a model's predict raises, so a broken model shows as 4xx)
    min_requests: int = 20  # judge only after this many requests in the window
    poll_s: float = 1.0  # registry poll interval
    stats_interval_s: float = 0.1  # HAProxy stats poll interval (failover detection resolution)
    start_timeout_s: float = 240.0  # a model server must answer /ping within this
    smoke_test: int = 1  # before a switch, each new server must answer the version's own
    # serving input example with 200 (0: off; the bake window still judges)

    @classmethod
    def from_env(cls, base: dict | None = None) -> Policy:
        values = {**asdict(cls()), **(base or {})}
        for name, default in asdict(cls()).items():
            env = os.environ.get(f"XREGION_ROUTER_{name.upper()}")
            if env:
                values[name] = type(default)(env)
        return cls(**values)


# --- state -------------------------------------------------------------------------------------
def state_path(home: Path) -> Path:
    return Path(home) / "router" / "state.json"


def load_state(home: Path) -> dict | None:
    try:
        return json.loads(state_path(home).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save_state(home: Path, state: dict) -> None:
    p = state_path(home)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(p)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _hp(url: str) -> tuple[str, int]:
    p = urlsplit(url)
    return p.hostname or "127.0.0.1", p.port or 80


# --- services ----------------------------------------------------------------------------------
def serving_service(
    cfg: XRegionConfig,
    region: str,
    home: Path,
    model: str,
    version: str,
    port: int,
    name: str | None = None,
    start_timeout: float = 240.0,
) -> Service:
    r = cfg.region(region)
    host = _hp(r.serving_url)[0]
    argv = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{model}/{version}",
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        "1",
    ]
    return Service(
        name=name or f"{region}-serving",
        region=region,
        component="serving",
        argv=argv,
        listen=(host, port),
        health={"type": "http", "url": f"http://{host}:{port}/ping"},
        env={
            **child_env(cfg, r, home),
            "MLFLOW_TRACKING_URI": r.mlflow_url,
            "MLFLOW_REGISTRY_URI": r.mlflow_url,
            "XREGION_SERVING_VERSION": str(version),
        },
        cwd=str(home),
        start_timeout=start_timeout,
    )


def haproxy_service(cfg: XRegionConfig, home: Path) -> Service:
    host, port = _hp(cfg.serving.frontend_url)
    return Service(
        name="haproxy",
        region=cfg.primary.name,
        component="haproxy",
        argv=[haproxy.binary(), "-W", "-db", "-f", str(haproxy.paths(home)["cfg"])],
        listen=(host, port),
        health={"type": "http", "url": f"{cfg.serving.frontend_url}{haproxy.MONITOR_URI}"},
        cwd=str(home),
        start_timeout=30,
        stop_signal=15,
    )


def router_service(cfg: XRegionConfig, home: Path, port: int) -> Service:
    return Service(
        name="router",
        region=cfg.primary.name,
        component="router",
        argv=[str(BIN / "xregion"), "router", "run"],
        listen=("127.0.0.1", port),
        health={"type": "http", "url": f"http://127.0.0.1:{port}/healthz"},
        env={**child_env(cfg, cfg.primary, home), "XREGION_HAPROXY_RUNTIME_API": str(haproxy.paths(home)["socket"])},
        cwd=str(home),
        start_timeout=60,
    )


_SPAWN = """
import json, sys
from pathlib import Path
from xregion.infra.embedded.supervisor import Service, Supervisor
home, svc = sys.argv[1], Service.from_dict(json.loads(sys.stdin.read()))
print(Supervisor(Path(home)).spawn(svc).pid)
"""


def spawn_detached(home: Path, svc: Service) -> None:
    """Spawn through a short-lived intermediate process, so the service is nobody's child: stopping
    (or killing) the router, which starts model servers, must not take them with it (the Supervisor
    stops a service's whole process tree)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _SPAWN, str(home)],
        input=json.dumps(asdict(svc)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise StartFailed(
            f"{svc.name}: spawn failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )


def _registry_client(cfg: XRegionConfig):
    from xregion.plugins.registry_client import client

    return client(cfg)


def production_version(cfg: XRegionConfig, model: str):
    from xregion.plugins.registry_client import production_version as pv

    return pv(_registry_client(cfg), cfg, model)


def wait_servers_up(api: RuntimeAPI, backend: str, servers: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = {r["svname"]: r["status"] for r in api.stats() if r["pxname"] == backend}
        if all(status.get(s) == "UP" for s in servers):
            return
        time.sleep(0.1)
    raise StartFailed(f"HAProxy does not see {backend} servers {servers} UP after {timeout:.0f}s: {status}")


def start_serving(
    cfg: XRegionConfig,
    home: Path,
    progress=print,
    regions: list[str] | None = None,
    *,
    policy: Policy | None = None,
    tuning: Tuning | None = None,
    model: str | None = None,
    version: str | None = None,
) -> None:
    """Model servers for the production version in every region (or ``regions``), HAProxy in front
    of them, and the router that follows the registry. Waits until traffic flows through HAProxy."""
    home = Path(home)
    sup = Supervisor(home)
    names = [cfg.region(r).name for r in (regions or [r.name for r in cfg.regions])]
    if sup.process("haproxy") is not None and load_state(home):
        progress("serving is already running (xregion router status); stop it first to change it")
        return
    model = model or cfg.registry.model_name
    policy = policy or Policy.from_env()
    tuning = tuning or Tuning.from_env()
    if version is None:
        mv = production_version(cfg, model)
        if mv is None:
            raise SupervisorError(
                f"no version of {model} holds @{cfg.registry.production_alias} or is in "
                f"{cfg.registry.production_stage}: promote one first (xregion promote {model} VERSION)"
            )
        version = str(mv.version)
    servers = {"bk_blue": {r: _hp(cfg.region(r).serving_url) for r in names}, "bk_green": {r: None for r in names}}
    cfg_path = haproxy.write(cfg, home, servers, "bk_blue", tuning)
    haproxy.check_config(cfg_path)
    metrics_port = free_port()
    state = {
        "model": model,
        "regions": names,
        "active": "bk_blue",
        "rejected": {},
        "slots": {
            "bk_blue": {
                "version": version,
                "servers": {
                    r: {"service": f"{r}-serving", "host": servers["bk_blue"][r][0], "port": servers["bk_blue"][r][1]}
                    for r in names
                },
            },
            "bk_green": None,
        },
        "next": None,
        "policy": asdict(policy),
        "tuning": asdict(tuning),
        "metrics_port": metrics_port,
        "runtime_api": str(haproxy.paths(home)["socket"]),
        "started": time.time(),
    }
    save_state(home, state)
    svcs = [
        serving_service(cfg, r, home, model, version, servers["bk_blue"][r][1], start_timeout=policy.start_timeout_s)
        for r in names
    ]
    progress(f"starting model servers for {model} version {version} in region(s) {', '.join(names)}")
    for s in svcs:
        sup.spawn(s)
    sup.wait_healthy(svcs, progress)
    progress("starting HAProxy")
    sup.start(haproxy_service(cfg, home), progress=progress)
    api = RuntimeAPI(state["runtime_api"])
    wait_servers_up(api, "bk_blue", names, timeout=60)
    progress("starting the router")
    sup.start(router_service(cfg, home, metrics_port), progress=progress)
    events.record(
        "serving.started", home, model=model, version=version, regions=names, frontend=cfg.serving.frontend_url
    )


def stop_serving(home: Path, progress=None) -> list[str]:
    """Stop the router, HAProxy and every model server (by pid); the event log stays."""
    sup = Supervisor(Path(home))
    stopped = []
    order = {"router": 0, "haproxy": 1, "serving": 2}
    for svc in sorted((s for s in sup.known() if s.component in order), key=lambda s: (order[s.component], s.name)):
        sup.stop(svc.name)
        stopped.append(svc.name)
        if progress:
            progress(f"stopped {svc.name}")
    state_path(home).unlink(missing_ok=True)
    return stopped


def serving_status(cfg: XRegionConfig, home: Path) -> dict:
    """State, versions per region, HAProxy's view of every server, recent events."""
    home = Path(home)
    sup = Supervisor(home)
    state = load_state(home)
    out: dict = {
        "running": state is not None,
        "frontend": cfg.serving.frontend_url,
        "stats": cfg.serving.haproxy_stats_url,
        "services": [],
        "servers": [],
        "versions": {},
    }
    for s in sup.known():
        if s.component in ("serving", "haproxy", "router"):
            st = sup.state(s.name)
            healthy = check_health(s, timeout=1.0)[0] if st == "running" else False
            out["services"].append(
                {
                    "service": s.name,
                    "region": s.region,
                    "component": s.component,
                    "state": st,
                    "healthy": healthy,
                    "listen": ":".join(map(str, s.listen)) if s.listen else "",
                    "version": s.env.get("XREGION_SERVING_VERSION"),
                }
            )
    if state:
        out.update(
            {
                "model": state["model"],
                "active": state["active"],
                "next": state.get("next"),
                "policy": state["policy"],
                "tuning": state["tuning"],
                "router_metrics": f"http://127.0.0.1:{state['metrics_port']}/metrics",
            }
        )
        active = state["slots"].get(state["active"]) or {}
        out["versions"] = {r: active.get("version") for r in state["regions"]}
        try:
            api = RuntimeAPI(os.environ.get("XREGION_HAPROXY_RUNTIME_API") or state["runtime_api"])
            out["active"] = api.active_backend(home)
            for r in api.stats():
                if r["pxname"] in SLOTS:
                    out["servers"].append(
                        {
                            "backend": r["pxname"],
                            "server": r["svname"],
                            "status": r["status"],
                            "check": r.get("check_status", ""),
                            "requests": int0(r.get("stot")),
                            "http_requests": int0(r.get("req_tot")),
                            "errors_5xx": int0(r.get("hrsp_5xx")),
                            "errors_4xx": int0(r.get("hrsp_4xx")),
                            "avg_response_ms": int0(r.get("rtime")),
                            "retries": int0(r.get("wretr")),
                            "redispatches": int0(r.get("wredis")),
                        }
                    )
        except RuntimeAPIError as err:
            out["haproxy_error"] = str(err)
    out["events"] = [
        e
        for e in events.read(home)
        if e.get("kind") in ("failover", "recovery", "switch", "rollback", "bake.passed", "switch.failed", "promotion")
    ][-20:]
    return out


# --- per-request log from HAProxy ------------------------------------------------------------------
class RequestLog:
    """HAProxy's per-request log lines (``log-format`` in haproxy.py) on a unix datagram socket:
    (time, backend, server, status, total ms, response ms) for latency percentiles."""

    def __init__(self, path: Path, keep: int = 200_000):
        self.path = Path(path)
        self.records: deque = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="haproxy-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            line = data.decode(errors="replace")
            _, sep, rest = line.partition(haproxy.LOG_TAG + " ")
            if not sep:
                continue
            parts = rest.split()
            if len(parts) < 5:
                continue
            try:
                rec = (time.time(), parts[0], parts[1], int(parts[2]), int(parts[3]), int(parts[4]))
            except ValueError:
                continue
            with self._lock:
                self.records.append(rec)

    def window(self, backend: str | None = None, since: float = 0.0) -> list[tuple]:
        with self._lock:
            return [r for r in self.records if r[0] >= since and (backend is None or r[1] == backend)]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.path.unlink(missing_ok=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))]


# --- the loop ---------------------------------------------------------------------------------
class Router:
    def __init__(self, cfg: XRegionConfig, home: Path, runtime_api: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.cfg, self.home = cfg, Path(home)
        self.sup = Supervisor(self.home)
        self.state = load_state(self.home)
        self.managed = self.state is not None
        addr = runtime_api or os.environ.get("XREGION_HAPROXY_RUNTIME_API") or (self.state or {}).get("runtime_api")
        if not addr:
            raise SupervisorError(
                "no HAProxy runtime API: set XREGION_HAPROXY_RUNTIME_API or start with `xregion router start`"
            )
        self.api = RuntimeAPI(addr)
        self.policy = Policy.from_env((self.state or {}).get("policy"))
        self.model = (self.state or {}).get("model") or cfg.registry.model_name
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.server_status: dict[tuple[str, str], str] = {}
        self.down: dict[tuple[str, str], dict] = {}
        self.bake: dict | None = None
        self.last_poll = 0.0
        self.registry_error: str | None = None
        self.reqlog: RequestLog | None = None
        reg = self.metrics_registry = CollectorRegistry()
        self.g_requests = Gauge(
            "xregion_serving_requests",
            "HTTP requests seen by HAProxy (counter mirrored)",
            ["backend", "server"],
            registry=reg,
        )
        self.g_errors = Gauge(
            "xregion_serving_errors",
            "5xx responses seen by HAProxy (counter mirrored)",
            ["backend", "server"],
            registry=reg,
        )
        self.g_up = Gauge(
            "xregion_serving_server_up", "1 when HAProxy's health checks say UP", ["backend", "server"], registry=reg
        )
        self.g_latency = Gauge(
            "xregion_serving_latency_ms",
            "HAProxy total request time over the last 60 s",
            ["backend", "quantile"],
            registry=reg,
        )
        self.g_version = Gauge("xregion_serving_version", "Version serving in each region", ["region"], registry=reg)
        self.c_events = Counter(
            "xregion_router_events", "Failovers, recoveries, switches and rollbacks", ["kind"], registry=reg
        )
        self.g_event_ts = Gauge(
            "xregion_router_last_event_timestamp_seconds", "Time of the last event", ["kind"], registry=reg
        )

    # --- helpers ----------------------------------------------------------------------------
    def _event(self, kind: str, **fields) -> dict:
        ev = events.record(kind, self.home, model=self.model, **fields)
        self.c_events.labels(kind).inc()
        self.g_event_ts.labels(kind).set(ev["ts"])
        log.warning("%s %s", kind, json.dumps(fields, default=str))
        return ev

    def _save(self) -> None:
        if self.managed:
            save_state(self.home, self.state)

    def _service_of(self, backend: str, server: str) -> tuple[str | None, str | None]:
        if not self.managed:
            return None, None
        nxt = self.state.get("next") or {}
        if nxt.get("slot") == backend:
            return nxt["servers"].get(server, {}).get("service"), nxt.get("version")
        slot = self.state["slots"].get(backend) or {}
        return slot.get("servers", {}).get(server, {}).get("service"), slot.get("version")

    def _watched(self, backend: str) -> bool:
        if not self.managed:
            return backend not in ("stats",) and not backend.startswith("fe_")
        return backend == self.state["active"] or backend == (self.state.get("next") or {}).get("slot")

    # --- observe: failover / recovery from HAProxy's checks --------------------------------------
    def observe(self) -> list[dict]:
        rows = self.api.stats()
        now = time.time()
        with self.lock:
            for row in rows:
                px, sv, status = row["pxname"], row["svname"], row.get("status", "")
                if sv in ("FRONTEND", "BACKEND"):
                    continue
                key = (px, sv)
                self.g_requests.labels(px, sv).set(int0(row.get("req_tot")) or int0(row.get("stot")))
                self.g_errors.labels(px, sv).set(int0(row.get("hrsp_5xx")))
                self.g_up.labels(px, sv).set(1 if status.startswith("UP") else 0)
                prev = self.server_status.get(key)
                self.server_status[key] = status
                if prev is None or not self._watched(px):
                    continue
                if status == "DOWN" and prev.startswith("UP") and key not in self.down:
                    service, version = self._service_of(px, sv)
                    fault = self._last_fault(service, now)
                    lastchg = int0(row.get("lastchg"))
                    ev = self._event(
                        "failover",
                        region=sv,
                        server=f"{px}/{sv}",
                        service=service,
                        version=version,
                        check_status=row.get("check_status"),
                        check_detail=row.get("last_chk"),
                        detected_at=now,
                        haproxy_down_at=now - lastchg,
                        fault_at=fault["ts"] if fault else None,
                        fault=fault["kind"] if fault else None,
                        detection_s=round(now - fault["ts"], 3) if fault else None,
                    )
                    self.down[key] = ev
                elif status == "UP" and key in self.down:
                    down = self.down.pop(key)
                    service, version = self._service_of(px, sv)
                    self._event(
                        "recovery",
                        region=sv,
                        server=f"{px}/{sv}",
                        service=service,
                        version=version,
                        detected_at=now,
                        down_for_s=round(now - down["detected_at"], 3),
                    )
        return rows

    def _last_fault(self, service: str | None, now: float) -> dict | None:
        if not service:
            return None
        faults = [
            e
            for e in events.read(self.home, kind="fault", since=now - 120)
            if e.get("service") == service and e.get("kind") in ("fault.kill", "fault.freeze", "fault.restart")
        ]
        return faults[-1] if faults else None

    def _monitor(self) -> None:
        while not self.stop.is_set():
            try:
                self.observe()
                if self.reqlog:
                    for backend in SLOTS:
                        recent = [r[4] for r in self.reqlog.window(backend, time.time() - 60) if r[3] > 0]
                        for q in (50, 99):
                            v = percentile(recent, q)
                            if v is not None:
                                self.g_latency.labels(backend, f"p{q}").set(v)
            except RuntimeAPIError as err:
                log.warning("%s", err)
                time.sleep(1)
            except Exception:  # the monitor must outlive any one bad sample
                log.exception("monitor")
            self.stop.wait(self.policy.stats_interval_s)

    # --- follow the registry --------------------------------------------------------------------
    def follow(self) -> None:
        if not self.managed or self.bake is not None:
            return
        try:
            mv = production_version(self.cfg, self.model)
            self.registry_error = None
        except Exception as err:  # a region's server or the database may be down: keep serving what we have
            if self.registry_error != str(err):
                log.warning("registry poll failed: %s", err)
            self.registry_error = str(err)
            return
        if mv is None:
            return
        version = str(mv.version)
        active = self.state["slots"][self.state["active"]]
        for r in self.state["regions"]:
            self.g_version.labels(r).set(int0(active["version"]))
        if version == str(active["version"]):
            return
        rejected = self.state.get("rejected", {}).get(version)
        if rejected is not None and int(mv.last_updated_timestamp or 0) <= rejected:
            return
        self.deploy(version)

    def deploy(self, version: str) -> None:
        old_slot = self.state["active"]
        new_slot = next(s for s in SLOTS if s != old_slot)
        old = self.state["slots"][old_slot]
        t0 = time.time()
        servers, svcs = {}, []
        for r in self.state["regions"]:
            host, base = _hp(self.cfg.region(r).serving_url)
            port = base if old["servers"][r]["port"] != base else free_port(host)
            name = f"{r}-serving-next"
            self.sup.stop(name)
            svcs.append(
                serving_service(
                    self.cfg,
                    r,
                    self.home,
                    self.model,
                    version,
                    port,
                    name=name,
                    start_timeout=self.policy.start_timeout_s,
                )
            )
            servers[r] = {"service": name, "host": host, "port": port}
        with self.lock:
            self.state["next"] = {"slot": new_slot, "version": version, "servers": servers, "started": t0}
            self._save()
        log.warning("deploying %s version %s to %s", self.model, version, new_slot)
        try:
            for s in svcs:
                spawn_detached(self.home, s)
            self.sup.wait_healthy(svcs)
            for r, s in servers.items():
                self.api.set_server(new_slot, r, s["host"], s["port"])
            wait_servers_up(self.api, new_slot, list(servers), timeout=60)
        except (SupervisorError, RuntimeAPIError) as err:
            self._abandon(
                version,
                svcs,
                str(old["version"]),
                str(err)[:2000],
                f"model servers for version {version} did not become healthy: {str(err)[:300]}",
                t0,
            )
            return
        failed = self.smoke_test(version, servers) if self.policy.smoke_test else None
        if failed:
            self._abandon(version, svcs, str(old["version"]), failed, f"smoke test before the switch: {failed}", t0)
            return
        base = self._backend_counters(new_slot)
        before = self._backend_counters(old_slot)  # the old version's 4xx rate: what clients' own mistakes cost
        base["old_4xx_rate"] = before["client_errors"] / before["requests"] if before["requests"] else 0.0
        self.api.switch(self.home, new_slot)
        t_switch = time.time()
        with self.lock:
            self.state["slots"][new_slot] = {"version": version, "servers": servers}
            self.state["active"] = new_slot
            self._save()
        self.bake = {
            "slot": new_slot,
            "old_slot": old_slot,
            "version": version,
            "old_version": old["version"],
            "switched_at": t_switch,
            "base": base,
        }
        self._event(
            "switch",
            from_version=old["version"],
            to_version=version,
            regions=self.state["regions"],
            backend=new_slot,
            switched_at=t_switch,
            prepare_s=round(t_switch - t0, 3),
            bake_s=self.policy.bake_s,
        )

    def _abandon(self, version: str, svcs: list, good: str, error: str, reason: str, t0: float) -> None:
        """A version that never took traffic: stop its servers, and roll the registry back, since it
        must not claim a version in production that cannot serve."""
        for s in svcs:
            self.sup.stop(s.name)
        with self.lock:
            self.state["next"] = None
            self.state.setdefault("rejected", {})[version] = int(time.time() * 1000)
            self._save()
        self._event("switch.failed", version=version, error=error)
        self._registry_rollback(version, good, reason, t0, time.time())

    def smoke_test(self, version: str, servers: dict) -> str | None:
        """Send the version's own serving input example to each new server before any client sees
        it; a version that cannot answer its own example never takes traffic. Returns what failed."""
        import tempfile
        import urllib.error
        import urllib.request

        import mlflow

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.model}/{version}/serving_input_example.json",
                    tracking_uri=self.cfg.primary.mlflow_url,
                    dst_path=tmp,
                )
                body = Path(path).read_bytes()
        except Exception as err:  # no example logged with the model: nothing to test with
            log.warning("no smoke test for %s version %s: %s", self.model, version, str(err)[:200])
            return None
        for region, s in servers.items():
            req = urllib.request.Request(
                f"http://{s['host']}:{s['port']}/invocations",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
            except urllib.error.HTTPError as err:
                return f"region {region}: HTTP {err.code} for the model's own input example: {err.read()[:300]!r}"
            except OSError as err:
                return f"region {region}: {err}"
        return None

    def _backend_counters(self, backend: str) -> dict:
        for r in self.api.stats():
            if r["pxname"] == backend and r["svname"] == "BACKEND":
                return {
                    "requests": int0(r.get("req_tot")),
                    "errors": int0(r.get("hrsp_5xx")),
                    "client_errors": int0(r.get("hrsp_4xx")),
                }
        return {"requests": 0, "errors": 0, "client_errors": 0}

    # --- bake window: roll back a bad version ---------------------------------------------------
    def judge(self) -> None:
        if self.bake is None:
            return
        b, p = self.bake, self.policy
        now = time.time()
        c = self._backend_counters(b["slot"])
        requests = c["requests"] - b["base"]["requests"]
        errors = c["errors"] - b["base"]["errors"]
        client_errors = c["client_errors"] - b["base"]["client_errors"]
        latencies = [
            r[4] for r in (self.reqlog.window(b["slot"], b["switched_at"]) if self.reqlog else []) if r[4] >= 0
        ]
        reason = None
        if requests >= p.min_requests and errors / requests > p.max_error_rate:
            reason = (
                f"error rate {errors / requests:.1%} > {p.max_error_rate:.1%} "
                f"({errors} of {requests} requests) {now - b['switched_at']:.1f}s into the bake window"
            )
        elif requests >= p.min_requests and client_errors / requests - b["base"]["old_4xx_rate"] > p.max_4xx_increase:
            reason = (
                f"4xx rate {client_errors / requests:.1%} vs {b['base']['old_4xx_rate']:.1%} for the previous "
                f"version ({client_errors} of {requests} requests: the model rejects what the previous one "
                f"answered) {now - b['switched_at']:.1f}s into the bake window"
            )
        elif len(latencies) >= p.min_requests and (p99 := percentile(latencies, 99)) > p.max_p99_ms:
            reason = (
                f"p99 latency {p99:.0f} ms > {p.max_p99_ms:.0f} ms over {len(latencies)} requests "
                f"{now - b['switched_at']:.1f}s into the bake window"
            )
        if reason:
            self.rollback(reason, requests=requests, errors=errors, client_errors=client_errors)
        elif now >= b["switched_at"] + p.bake_s:
            self.finish(requests=requests, errors=errors, client_errors=client_errors)

    def rollback(self, reason: str, **figures) -> None:
        b = self.bake
        t_detect = time.time()
        self.api.switch(self.home, b["old_slot"])
        t_back = time.time()
        nxt = self.state["next"] or {}
        for r, s in (nxt.get("servers") or {}).items():
            try:
                self.api.disable_server(b["slot"], r)
            except RuntimeAPIError:
                pass
        registry_error = self._registry_rollback_only(str(b["old_version"]), reason)
        t_registry = time.time()
        with self.lock:
            self.state.setdefault("rejected", {})[b["version"]] = int(time.time() * 1000)
            self.state["active"] = b["old_slot"]
            self.state["slots"][b["slot"]] = None
            self.state["next"] = None
            self._save()
        for s in (nxt.get("servers") or {}).values():
            self.sup.stop(s["service"])
        self.bake = None
        self._event(
            "rollback",
            from_version=b["version"],
            to_version=str(b["old_version"]),
            reason=reason,
            source="router",
            switched_at=b["switched_at"],
            detected_at=t_detect,
            switched_back_at=t_back,
            registry_rolled_back_at=t_registry,
            rollback_s=round(t_back - b["switched_at"], 3),
            switch_back_s=round(t_back - t_detect, 4),
            registry_error=registry_error,
            **figures,
        )

    def _registry_rollback_only(self, to_version: str, reason: str) -> str | None:
        try:
            from xregion.plugins.registry_client import rollback as registry_rollback

            registry_rollback(
                _registry_client(self.cfg),
                self.cfg,
                self.model,
                reason=reason,
                to_version=to_version,
                who="xregion-router",
                record=False,
            )
            return None
        except Exception as err:  # the data plane is back either way; say why the registry is not
            return str(err)[:2000]

    def _registry_rollback(self, bad: str, good: str, reason: str, t_switch: float, t_detect: float) -> None:
        """A version that never served: registry back to ``good``, recorded as a rollback."""
        error = self._registry_rollback_only(good, reason)
        with self.lock:
            self.state.setdefault("rejected", {})[bad] = int(time.time() * 1000)
            self._save()
        self._event(
            "rollback",
            from_version=bad,
            to_version=good,
            reason=reason,
            source="router",
            switched_at=None,
            detected_at=t_detect,
            switched_back_at=None,
            registry_rolled_back_at=time.time(),
            rollback_s=None,
            switch_back_s=None,
            registry_error=error,
        )

    def finish(self, **figures) -> None:
        b = self.bake
        baked = round(time.time() - b["switched_at"], 3)
        nxt = self.state["next"]
        old = self.state["slots"][b["old_slot"]]
        for r in old["servers"]:
            try:
                self.api.disable_server(b["old_slot"], r)
            except RuntimeAPIError:
                pass
            self.sup.stop(old["servers"][r]["service"])
        servers = {}
        for r, s in nxt["servers"].items():
            final = f"{r}-serving"
            rename_service(self.sup, s["service"], final)
            servers[r] = {**s, "service": final}
        with self.lock:
            self.state["slots"][b["slot"]] = {"version": b["version"], "servers": servers}
            self.state["slots"][b["old_slot"]] = None
            self.state["active"] = b["slot"]
            self.state["next"] = None
            self._save()
        self.bake = None
        self._event(
            "bake.passed",
            version=b["version"],
            previous_version=b["old_version"],
            backend=b["slot"],
            baked_s=baked,
            **figures,
        )

    def recover(self) -> None:
        """After a restart of the router mid-switch: the old colour serves again, the new servers stop."""
        if not self.managed or not self.state.get("next"):
            return
        nxt = self.state["next"]
        old_slot = next(s for s in SLOTS if s != nxt["slot"])
        try:
            if self.api.active_backend(self.home) != old_slot:
                self.api.switch(self.home, old_slot)
        except RuntimeAPIError:
            pass
        for s in nxt["servers"].values():
            self.sup.stop(s["service"])
        self.state["active"] = old_slot
        self.state["slots"][nxt["slot"]] = None
        self.state["next"] = None
        self._save()
        self._event("switch.aborted", version=nxt["version"], reason="router restarted during the switch")

    # --- run --------------------------------------------------------------------------------------
    def run(self, metrics_port: int | None = None, duration: float | None = None) -> None:
        port = (
            metrics_port
            or (self.state or {}).get("metrics_port")
            or int0(os.environ.get("XREGION_ROUTER_METRICS_PORT"))
        )
        server = self._serve_metrics(port) if port else None
        if self.managed:
            self.reqlog = RequestLog(haproxy.paths(self.home)["log"])
            self.recover()
        monitor = threading.Thread(target=self._monitor, name="monitor", daemon=True)
        monitor.start()
        end = time.monotonic() + duration if duration else None
        try:
            while not self.stop.is_set() and (end is None or time.monotonic() < end):
                try:
                    if self.bake is not None:
                        self.judge()
                    elif time.monotonic() - self.last_poll >= self.policy.poll_s:
                        self.last_poll = time.monotonic()
                        self.follow()
                except RuntimeAPIError as err:
                    log.warning("%s", err)
                    self.stop.wait(1)
                self.stop.wait(0.1 if self.bake is not None else 0.2)
        finally:
            self.stop.set()
            if server:
                server.shutdown()
            if self.reqlog:
                self.reqlog.close()

    def status(self) -> dict:
        with self.lock:
            return {
                "managed": self.managed,
                "model": self.model,
                "state": self.state,
                "bake": self.bake,
                "servers": {f"{k[0]}/{k[1]}": v for k, v in self.server_status.items()},
                "registry_error": self.registry_error,
            }

    def _serve_metrics(self, port: int) -> ThreadingHTTPServer:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        router = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/metrics":
                    body, ctype = generate_latest(router.metrics_registry), CONTENT_TYPE_LATEST
                elif self.path == "/status":
                    body, ctype = json.dumps(router.status(), default=str).encode(), "application/json"
                elif self.path == "/healthz":
                    body, ctype = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


def rename_service(sup: Supervisor, old: str, new: str) -> None:
    """Give a running service another name (its pid file and log follow; the process is untouched)."""
    rec = json.loads(sup.pidfile(old).read_text())
    rec["service"]["name"] = new
    tmp = sup.pidfile(new).with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(sup.pidfile(new))
    sup.pidfile(old).unlink(missing_ok=True)
    if sup.log(old).exists():
        if sup.log(new).exists():
            sup.log(new).replace(sup.log(new).with_suffix(".prev.log"))
        sup.log(old).replace(sup.log(new))
