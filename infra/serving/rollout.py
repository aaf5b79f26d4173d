"""Rolling a new version out on the idle colour and judging it: the act half of the router.

Deploy: the version's servers planned, announced in the state, started (or, in a deployment,
reported by their agents), seen UP by HAProxy and smoke-tested with the version's own serving
input example; a smoke test that cannot run blocks the switch. Then one runtime-API command
switches traffic. Bake: probes and the judge (``judge.py``); a bad version is switched back at
once, its servers stopped and the registry rolled back with the reason; a good one is adopted.
"""

from __future__ import annotations

import logging
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .control import wait_servers_up
from .haproxy import RuntimeAPIError
from .judge import Bake, judge
from .state import Server, Slot

log = logging.getLogger(__name__)


class Rollout:
    """The router's deploy, bake, rollback and adopt steps (mixed into ``Router``, whose state,
    HAProxy runtime API, servers and event log they act on)."""

    def deploy(self, version: str) -> None:
        old_slot, new_slot, old = self.state.active, self.state.idle, self.state.serving()
        t0 = time.time()
        log.warning("deploying %s version %s to %s", self.model, version, new_slot)
        pending = self.servers.plan(
            new_slot, version, self.state.regions, {r: s.port for r, s in old.servers.items()}, t0
        )
        with self.lock:  # announced: an external colour's agents start serving it now
            self.state.pending = pending
            self._save()
        try:
            self.servers.start(pending)
            if self.state.mode == "embedded":  # a deployment's servers have fixed (DNS) addresses
                for r, s in pending.servers.items():
                    self.api.set_server(new_slot, r, s.host, s.port)
            wait_servers_up(self.api, new_slot, list(pending.servers), timeout=60)
        except Exception as err:  # whatever failed (servers, HAProxy), the version never takes traffic
            return self._abandon(
                version,
                old.version,
                f"model servers for version {version} did not become healthy: {str(err)[:300]}",
                str(err)[:2000],
            )
        failed = self.smoke_test(version, pending.servers)
        if failed:
            return self._abandon(version, old.version, f"smoke test before the switch: {failed}", failed)
        self.api.switch(self.map_file, new_slot)
        t_switch = time.time()
        with self.lock:
            self.state.slots[new_slot] = Slot(version, pending.servers)
            self.state.active, self.state.pending = new_slot, None
            self._save()
        self.bake = Bake(new_slot, old_slot, version, old.version, t_switch)
        self._event(
            "serving.switch",
            from_version=old.version,
            to_version=version,
            regions=self.state.regions,
            backend=new_slot,
            switched_at=t_switch,
            prepare_s=round(t_switch - t0, 3),
            bake_s=self.policy.bake_s,
        )

    def _abandon(self, version: str, good: str, reason: str, error: str) -> None:
        """A version that never took traffic: stop its servers and roll the registry back, since it
        must not claim a version in production that cannot serve."""
        with self.lock:
            if self.state.pending:
                self.servers.stop(self.state.pending.servers)
            self.state.pending = None
            self.state.rejected[version] = int(time.time() * 1000)
            self._save()
        self._event("serving.switch_failed", version=version, error=error)
        registry_error = self._registry_rollback(good, reason)
        self._event(
            "serving.rollback",
            from_version=version,
            to_version=good,
            reason=reason,
            source="router",
            switched_at=None,
            detected_at=time.time(),
            switched_back_at=None,
            registry_rolled_back_at=time.time(),
            rollback_s=None,
            registry_error=registry_error,
        )

    def smoke_test(self, version: str, servers: dict[str, Server]) -> str | None:
        """The version's own serving input example, sent to each new server before any client sees
        it. Returns what failed, or None. A version whose example cannot be found fails."""
        try:
            body = self._input_example(version)
        except Exception as err:  # nothing to test with: the switch is blocked, never silently skipped
            return f"cannot run: no serving input example for {self.model} version {version} ({str(err)[:200]})"
        for region, s in servers.items():
            error = probe(s, body)
            if error:
                return f"region {region}: {error}"
        return None

    def _input_example(self, version: str) -> bytes:
        from xregion.plugins.registry_client import download_version_file, on_any_region

        with tempfile.TemporaryDirectory() as tmp:
            path = on_any_region(
                self.cfg,
                lambda cl: download_version_file(cl, self.model, version, "serving_input_example.json", tmp),
                self.regions,
            )
            return Path(path).read_bytes()

    def bake_step(self) -> None:
        """One look at the bake window: probe, judge, and roll back or adopt."""
        b, now = self.bake, time.time()
        if now - b.last_probe >= self.policy.probe_interval_s:
            if b.version not in self.examples:
                self.examples = {b.version: self._input_example(b.version)}
            for s in self.state.slots[b.slot].servers.values():
                t = time.perf_counter()
                error = probe(s, self.examples[b.version], timeout=5)
                took_ms = (time.perf_counter() - t) * 1000
                if error is None and took_ms > self.policy.max_p99_ms:  # a correct request, answered too slowly
                    error = f"answered its own input example in {took_ms:.0f} ms > {self.policy.max_p99_ms:.0f} ms"
                b.probed(error, now)
        verdict = judge(b, self.reqlog.window(b.slot, b.switched_at) if self.reqlog else [], self.policy, now)
        if verdict.rollback:
            self.rollback(verdict.rollback, verdict.figures())
        elif verdict.passed:
            self.finish(verdict.figures())

    def rollback(self, reason: str, figures: dict) -> None:
        b, t_detect = self.bake, time.time()
        self.api.switch(self.map_file, b.old_slot)
        t_back = time.time()
        bad = self.state.slots[b.slot]
        for region in bad.servers:
            try:
                self.api.disable_server(b.slot, region)
            except RuntimeAPIError:
                pass
        registry_error = self._registry_rollback(b.old_version, reason)
        t_registry = time.time()
        with self.lock:
            self.state.rejected[b.version] = int(time.time() * 1000)
            self.state.active, self.state.slots[b.slot] = b.old_slot, None
            self._save()
        self.servers.stop(bad.servers)
        self.bake = None
        self._event(
            "serving.rollback",
            from_version=b.version,
            to_version=b.old_version,
            reason=reason,
            source="router",
            switched_at=b.switched_at,
            detected_at=t_detect,
            switched_back_at=t_back,
            registry_rolled_back_at=t_registry,
            rollback_s=round(t_back - b.switched_at, 3),
            switch_back_s=round(t_back - t_detect, 4),
            registry_error=registry_error,
            **figures,
        )

    def _registry_rollback(self, to_version: str, reason: str) -> str | None:
        from xregion.plugins.registry_client import on_any_region
        from xregion.plugins.registry_client import rollback as registry_rollback

        try:
            on_any_region(
                self.cfg,
                lambda cl: registry_rollback(
                    cl, self.cfg, self.model, reason=reason, to_version=to_version, who="xregion-router", record=False
                ),
                self.regions,
            )
            return None
        except Exception as err:  # the data plane is back either way; say why the registry is not
            return str(err)[:2000]

    def finish(self, figures: dict) -> None:
        b = self.bake
        old = self.state.slots[b.old_slot]
        for region in old.servers:
            try:
                self.api.disable_server(b.old_slot, region)
            except RuntimeAPIError:
                pass
        self.servers.stop(old.servers)
        with self.lock:
            new = self.state.slots[b.slot]
            self.state.slots[b.slot] = Slot(new.version, self.servers.adopt(new.servers))
            self.state.slots[b.old_slot] = None
            self._save()
        self.bake = None
        self._event(
            "serving.bake_passed",
            version=b.version,
            previous_version=b.old_version,
            backend=b.slot,
            baked_s=round(time.time() - b.switched_at, 3),
            **figures,
        )

    def recover(self) -> None:
        """After a restart of the router mid-switch: the serving colour stays, unfinished servers stop."""
        if not self.managed or not self.state.pending:
            return
        pending = self.state.pending
        try:
            if self.api.active_backend(self.map_file) != self.state.active:
                self.api.switch(self.map_file, self.state.active)
        except RuntimeAPIError:
            pass
        self.servers.stop(pending.servers)
        self.state.pending = None
        self._save()
        self._event("serving.switch_aborted", version=pending.version, reason="router restarted during the switch")

    # --- run ------------------------------------------------------------------------------------------


def probe(server: Server, body: bytes, timeout: float = 30) -> str | None:
    """POST a scoring request straight to one model server; what went wrong, or None."""
    req = urllib.request.Request(
        f"http://{server.addr}/invocations", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
        return None
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} for the model's own input example: {err.read()[:300]!r}"
    except OSError as err:
        return str(err)
