"""The model-server agent of a deployment (`xregion router agent`): one per region and colour.

It asks the router which version its colour serves (``GET /desired``), runs ``mlflow models serve``
for exactly that version (never a floating alias: a restarted or scaled-out server comes back as
what the router gated), restarts it when the router changes its mind or when it dies, stops it
when its colour has no version, and reports what it serves (``POST /report``) once the server
answers /ping. The router never needs to reach into the container.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    router_url: str  # http://router:5310
    token: str
    region: str
    slot: str  # bk_blue | bk_green
    host: str  # where the model server listens
    port: int
    poll_s: float = 1.0


class Agent:
    def __init__(self, conf: AgentConfig):
        self.conf = conf
        self.child: subprocess.Popen | None = None
        self.version: str | None = None
        self.reported: str | None = None

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        c = self.conf
        req = urllib.request.Request(
            f"{c.router_url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.conf.host}:{self.conf.port}/ping", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _stop(self) -> None:
        if self.child and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)
            try:
                self.child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()
        self.child, self.reported = None, None

    def _start(self, model: str, version: str) -> None:
        bin_dir = Path(sys.executable).parent
        argv = [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{model}/{version}",
            "--env-manager",
            "local",
            "-h",
            self.conf.host,
            "-p",
            str(self.conf.port),
            "-w",
            "1",
        ]
        log.info("serving %s version %s on %s:%s", model, version, self.conf.host, self.conf.port)
        self.child = subprocess.Popen(argv, start_new_session=True)

    def step(self) -> None:
        """One look at the router: converge the model server on what it says."""
        c = self.conf
        want = self._call("GET", f"/desired?region={c.region}&slot={c.slot}")
        version = want.get("version")
        if version != self.version or (self.child is not None and self.child.poll() is not None):
            self._stop()
            self.version = version
            if version:
                self._start(want["model"], version)
        if self.version and self._serving():  # every time: a restarted router learns it again
            self._call("POST", "/report", {"region": c.region, "slot": c.slot, "version": self.version})
            self.reported = self.version

    def run(self, duration: float | None = None) -> None:
        end = time.monotonic() + duration if duration else None
        try:
            while end is None or time.monotonic() < end:
                try:
                    self.step()
                except (urllib.error.URLError, OSError, ValueError) as err:  # the router restarts: keep serving
                    log.warning("router unreachable: %s", err)
                time.sleep(self.conf.poll_s)
        finally:
            self._stop()
