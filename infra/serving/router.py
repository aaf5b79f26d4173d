"""The serving control plane (`xregion router run`): a reconcile loop that observes HAProxy and the
registry, decides, and acts, over the typed state in ``state.py``.

Observe: every ``stats_interval_s`` HAProxy's ``show stat``; a server of a watched colour going
DOWN is a ``serving.server_down`` event (with the detection time from the latest injected fault
of that service), coming back UP a ``serving.server_up``. A restarted HAProxy (new pid) gets the
router's state re-applied at once (``serving.reapplied``).

Decide and act: every ``poll_s`` the production version (the production alias, else the newest
version in the production stage) is read from the first region whose MLflow server answers. A
new one is deployed to the idle colour: servers started and healthy, seen UP by HAProxy, and a
smoke test (the version's own serving input example must answer 200 from every new server; a
smoke test that cannot run blocks the switch). Then one runtime-API command switches traffic
(``serving.switch``). During the bake window the judge (``judge.py``) counts the model's own
failures only; a bad version is switched back at once, its servers stopped, the registry rolled
back with the reason (``serving.rollback``). A rolled-back version is not deployed again unless
promoted again. A clean window ends with ``serving.bake_passed``; the old servers stop.

Without a state file (a platform HAProxy the router does not own) it only watches.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from xregion import events
from xregion.config import XRegionConfig
from xregion.secrets import secret
from xregion.stats import percentile

from . import haproxy
from .api import RouterMetrics, serve_api
from .control import TOKEN, render_front_door
from .haproxy import SLOTS, RuntimeAPI, RuntimeAPIError, int0
from .judge import Bake
from .reqlog import RequestLog
from .rollout import Rollout
from .servers import EmbeddedServers, ExternalServers
from .state import Policy, Slot, load_state, save_state

log = logging.getLogger(__name__)
WATCHED_FAULTS = ("fault.kill", "fault.freeze", "fault.restart")


class Router(Rollout):
    def __init__(self, cfg: XRegionConfig, home: Path, runtime_api: str | None = None):
        self.cfg, self.home = cfg, Path(home)
        self.state = load_state(self.home)
        self.managed = self.state is not None
        addr = runtime_api or os.environ.get("XREGION_HAPROXY_RUNTIME_API") or str(haproxy.paths(self.home)["socket"])
        self.api = RuntimeAPI(addr)
        self.map_file = str(haproxy.paths(self.home)["map"])
        self.policy = self.state.policy if self.state else Policy.from_env()
        self.model = self.state.model if self.state else cfg.registry.model_name
        external = self.state is not None and self.state.mode == "external"
        self.servers = (
            ExternalServers(cfg, self.policy.start_timeout_s)
            if external
            else EmbeddedServers(cfg, self.home, self.model, self.policy.start_timeout_s)
        )
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.server_status: dict[tuple[str, str], str] = {}
        self.down: dict[tuple[str, str], dict] = {}
        self.bake: Bake | None = None
        self.last_poll = 0.0
        self.registry_error: str | None = None
        self.reqlog: RequestLog | None = None
        self.haproxy_id: str | None = None
        self.metrics = RouterMetrics()
        self.examples: dict[str, bytes] = {}
        from xregion.plugins.registry_client import RegionOrder

        self.regions = RegionOrder(
            cfg
        )  # the registry's servers, the last that answered first  # version -> its serving input example (the bake's probe)

    # --- helpers --------------------------------------------------------------------------------
    def _event(self, kind: str, **fields) -> dict:
        ev = events.record(kind, self.home, model=self.model, **fields)
        self.metrics.events.labels(kind).inc()
        self.metrics.event_ts.labels(kind).set(ev["ts"])
        log.warning("%s %s", kind, json.dumps(fields, default=str))
        return ev

    def _save(self) -> None:
        if self.managed:
            save_state(self.home, self.state)
            if self.state.mode == "embedded":  # a restarted HAProxy starts from this
                render_front_door(self.cfg, self.home, self.state)

    def _service_of(self, backend: str, server: str) -> tuple[str | None, str | None]:
        if not self.managed:
            return None, None
        pending = self.state.pending
        slot = Slot(pending.version, pending.servers) if pending and pending.slot == backend else None
        slot = slot or self.state.slots.get(backend)
        s = slot.servers.get(server) if slot else None
        return (s.service if s else None), (slot.version if slot else None)

    def _watched(self, backend: str) -> bool:
        if not self.managed:
            return backend in SLOTS
        return backend == self.state.active or (self.state.pending is not None and backend == self.state.pending.slot)

    # --- observe: the data plane ------------------------------------------------------------------
    def observe(self) -> list[dict]:
        self._check_restarted()
        rows = self.api.stats()
        now = time.time()
        with self.lock:
            for row in rows:
                if row["svname"] not in ("FRONTEND", "BACKEND"):
                    self._observe_server(row, now)
        return rows

    def _observe_server(self, row: dict, now: float) -> None:
        px, sv, status = row["pxname"], row["svname"], row.get("status", "")
        key = (px, sv)
        self.metrics.requests.labels(px, sv).set(int0(row.get("req_tot")) or int0(row.get("stot")))
        self.metrics.errors.labels(px, sv).set(int0(row.get("hrsp_5xx")))
        self.metrics.up.labels(px, sv).set(1 if status.startswith("UP") else 0)
        prev, self.server_status[key] = self.server_status.get(key), status
        if prev is None or not self._watched(px):
            return
        service, version = self._service_of(px, sv)
        if status == "DOWN" and prev.startswith("UP") and key not in self.down:
            fault = self._last_fault(service, now)
            self.down[key] = self._event(
                "serving.server_down",
                region=sv,
                server=f"{px}/{sv}",
                service=service,
                version=version,
                check_status=row.get("check_status"),
                check_detail=row.get("last_chk"),
                detected_at=now,
                fault_at=fault["ts"] if fault else None,
                fault=fault["kind"] if fault else None,
                detection_s=round(now - fault["ts"], 3) if fault else None,
            )
        elif status == "UP" and key in self.down:
            down = self.down.pop(key)
            self._event(
                "serving.server_up",
                region=sv,
                server=f"{px}/{sv}",
                service=service,
                version=version,
                detected_at=now,
                down_for_s=round(now - down["detected_at"], 3),
            )

    def _last_fault(self, service: str | None, now: float) -> dict | None:
        if not service:
            return None
        faults = [
            e
            for e in events.read(self.home, kind="fault.", since=now - 120)
            if e.get("service") == service and e["kind"] in WATCHED_FAULTS
        ]
        return faults[-1] if faults else None

    def _check_restarted(self) -> None:
        """HAProxy restarted since we last looked: put our state back into it. A deployment's router
        also does so the first time it sees HAProxy: the two restart independently (a pod, a
        volume), and HAProxy's map file may name another colour than the router's state."""
        current = self.api.process_id()
        first_look = self.haproxy_id is None and self.managed and self.state.mode == "external"
        if self.managed and current != self.haproxy_id and (self.haproxy_id is not None or first_look):
            self.reapply()
        self.haproxy_id = current

    def reapply(self) -> None:
        """Make HAProxy say what the state says: the serving colour and every server we placed (a
        deployment's servers have fixed DNS addresses in the configuration, which HAProxy's
        ``set server addr`` would refuse: only the colour is put back there)."""
        with self.lock:
            self.api.switch(self.map_file, self.state.active)
            placed = {}
            for slot, servers in self.state.haproxy_servers().items():
                for region, addr in servers.items():
                    if addr and self.state.mode == "embedded":
                        host, port = addr.rsplit(":", 1)
                        self.api.set_server(slot, region, host, int(port))
                        placed[f"{slot}/{region}"] = addr
        self._event("serving.reapplied", active=self.state.active, servers=placed)

    def _monitor(self) -> None:
        while not self.stop.is_set():
            try:
                self.observe()
                self._export_latency()
            except RuntimeAPIError as err:
                log.warning("%s", err)
                self.stop.wait(0.5)
            except Exception:  # the monitor must outlive any one bad sample
                log.exception("monitor")
            self.stop.wait(self.policy.stats_interval_s)

    def _export_latency(self) -> None:
        if not self.reqlog:
            return
        for backend in SLOTS:
            recent = [r.total_ms for r in self.reqlog.window(backend, time.time() - 60) if r.status > 0]
            for q in (50, 99):
                if (v := percentile(recent, q)) is not None:
                    self.metrics.latency.labels(backend, f"p{q}").set(v)

    # --- decide: follow the registry ---------------------------------------------------------------
    def follow(self) -> None:
        if not self.managed or self.bake is not None:
            return
        from xregion.plugins.registry_client import on_any_region, production_version

        try:
            mv = on_any_region(self.cfg, lambda cl: production_version(cl, self.cfg, self.model), self.regions)
            self.registry_error = None
        except Exception as err:  # every region's server or the database may be down: keep serving
            if self.registry_error != str(err):
                log.warning("registry poll failed: %s", err)
            self.registry_error = str(err)
            return
        if mv is None:
            return
        version, active = str(mv.version), self.state.serving()
        for r in self.state.regions:
            self.metrics.version.labels(r).set(int0(active.version))
        rejected = self.state.rejected.get(version)
        if version == active.version or (rejected is not None and int(mv.last_updated_timestamp or 0) <= rejected):
            return
        self.deploy(version)

    def desired(self, args: dict) -> tuple[int, dict]:
        """What a colour serves in a region: its version, or None (the agent then stops its server)."""
        slot, region = args.get("slot", ""), args.get("region", "")
        if slot not in SLOTS or region not in (self.state.regions if self.state else []):
            return 400, {"error": f"slot must be one of {SLOTS} and region one of the router's regions"}
        with self.lock:
            p = self.state.pending
            chosen = Slot(p.version, p.servers) if p and p.slot == slot else self.state.slots.get(slot)
        return 200, {"model": self.model, "version": chosen.version if chosen else None}

    def report(self, args: dict) -> tuple[int, dict]:
        if not isinstance(self.servers, ExternalServers):
            return 409, {"error": "this router starts its own model servers; nothing reports to it"}
        self.servers.report(str(args.get("slot")), str(args.get("region")), args.get("version"))
        return 200, {}

    def run(self, duration: float | None = None, api_host: str = "127.0.0.1") -> None:
        server = None
        if self.managed:
            routes = {
                ("GET", "/status"): lambda _: (200, self.status()),
                ("GET", "/desired"): self.desired,
                ("POST", "/report"): self.report,
            }
            token = os.environ.get("XREGION_ROUTER_TOKEN") or secret(self.home, TOKEN)  # a deployment's: a Secret
            server = serve_api(self.state.api_port, token, self.metrics, routes, api_host)
            self.reqlog = RequestLog(haproxy.paths(self.home)["log"])
            self.recover()
        threading.Thread(target=self._monitor, name="monitor", daemon=True).start()
        end = time.monotonic() + duration if duration else None
        try:
            while not self.stop.is_set() and (end is None or time.monotonic() < end):
                self._step()
                self.stop.wait(0.1 if self.bake is not None else 0.2)
        finally:
            self.stop.set()
            if server:
                server.shutdown()
            if self.reqlog:
                self.reqlog.close()

    def _step(self) -> None:
        try:
            if self.bake is not None:
                self.bake_step()
            elif time.monotonic() - self.last_poll >= self.policy.poll_s:
                self.last_poll = time.monotonic()
                self.follow()
        except RuntimeAPIError as err:
            log.warning("%s", err)
            self.stop.wait(0.5)

    def status(self) -> dict:
        with self.lock:
            return {
                "managed": self.managed,
                "model": self.model,
                "state": json.loads(self.state.to_json()) if self.state else None,
                "bake": self.bake.__dict__ if self.bake else None,
                "servers": {f"{k[0]}/{k[1]}": v for k, v in self.server_status.items()},
                "registry_error": self.registry_error,
            }
