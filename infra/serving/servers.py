"""Model servers of the embedded platform: `mlflow models serve` per region, as supervised services.

A model server is pinned to a version (``models:/<model>/<version>``), never ``@champion``: a
restarted server must come back as the version HAProxy routes to it, never silently as a newer
one that was never gated. Each region's server loads the model through its own region's MLflow
server and S3 store.

``EmbeddedServers`` is how the router's decisions become processes on this host: it starts the
servers of a version being deployed (detached, so that the router's own death does not take them
along), stops the ones no longer needed, and renames the survivors ``<region>-serving``.
"""

from __future__ import annotations

import time
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.infra.embedded import auth
from xregion.infra.embedded.stack import BIN, child_env, child_secrets
from xregion.infra.embedded.supervisor import Service, Supervisor, SupervisorError
from xregion.net import free_port, host_port

from .state import Pending, Server

GLOBAL = "global"  # the front door and its router belong to no region: losing a region spares them


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
    host = host_port(r.serving_url)[0]
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
    account, password = auth.service_env(home, "serving", cfg)  # read-only: it only loads the model
    env = {
        **child_env(cfg, r, home),
        "MLFLOW_TRACKING_URI": r.mlflow_url,
        "MLFLOW_REGISTRY_URI": r.mlflow_url,
        "XREGION_SERVING_VERSION": str(version),
        **account,
    }
    return Service(
        name=name or f"{region}-serving",
        region=region,
        component="serving",
        argv=argv,
        listen=(host, port),
        health={"type": "http", "url": f"http://{host}:{port}/ping"},
        env=env,
        secret_env={**child_secrets(r), **password},
        cwd=str(home),
        start_timeout=start_timeout,
    )


def colour_address(serving_url: str, slot: str) -> tuple[str, int]:
    """Where a deployment runs a region's model server of one colour: the regions file's serving
    host with the colour after its first DNS label (``model-server-a`` -> ``model-server-a-blue``,
    ``model-server.xregion-a.svc...`` -> ``model-server-blue.xregion-a.svc...``), same port."""
    host, port = host_port(serving_url)
    first, dot, rest = host.partition(".")
    return f"{first}-{slot.removeprefix('bk_')}{dot}{rest}", port


class EmbeddedServers:
    """Starts and stops the model servers of one model on this host."""

    def __init__(self, cfg: XRegionConfig, home: Path, model: str, start_timeout: float):
        self.cfg, self.home, self.model = cfg, Path(home), model
        self.sup = Supervisor(self.home)
        self.start_timeout = start_timeout

    def plan(self, slot: str, version: str, regions: list[str], busy: dict[str, int], now: float) -> Pending:
        """Where ``<region>-serving-next`` will listen: the region's port unless ``busy`` uses it."""
        servers = {}
        for region in regions:
            host, base = host_port(self.cfg.region(region).serving_url)
            port = base if busy.get(region) != base else free_port(host)
            servers[region] = Server(f"{region}-serving-next", host, port)
        return Pending(slot, version, servers, now)

    def start(self, pending: Pending) -> None:
        """Start the planned servers; returns once every one answers /ping. Raises SupervisorError
        (and stops them)."""
        svcs = [
            serving_service(
                self.cfg,
                region,
                self.home,
                self.model,
                pending.version,
                s.port,
                name=s.service,
                start_timeout=self.start_timeout,
            )
            for region, s in pending.servers.items()
        ]
        try:
            for svc in svcs:
                self.sup.stop(svc.name)
                self.sup.spawn_detached(svc)
            self.sup.wait_healthy(svcs)
        except SupervisorError:
            self.stop(pending.servers)
            raise

    def stop(self, servers: dict[str, Server]) -> None:
        for s in servers.values():
            self.sup.stop(s.service)

    def adopt(self, servers: dict[str, Server]) -> dict[str, Server]:
        """The servers of a version that passed its bake window become ``<region>-serving``."""
        out = {}
        for region, s in servers.items():
            final = f"{region}-serving"
            if s.service != final:
                self.sup.rename(s.service, final)
            out[region] = Server(final, s.host, s.port)
        return out


class ExternalServers:
    """Model servers the platform runs (compose services, Kubernetes deployments), one per region
    and colour, each with an agent (``xregion router agent``) that asks the router which version
    its colour serves. The router announces a version by putting it in its state; the servers are
    ready when every agent reported that version answering."""

    def __init__(self, cfg: XRegionConfig, start_timeout: float):
        self.cfg, self.start_timeout = cfg, start_timeout
        self.reports: dict[tuple[str, str], str] = {}  # (slot, region) -> version its agent serves

    def address(self, slot: str, region: str) -> Server:
        host, port = colour_address(self.cfg.region(region).serving_url, slot)
        return Server(f"{region}-{slot}", host, port)

    def plan(self, slot: str, version: str, regions: list[str], busy: dict[str, int], now: float) -> Pending:
        return Pending(slot, version, {r: self.address(slot, r) for r in regions}, now)

    def report(self, slot: str, region: str, version: str | None) -> None:
        self.reports[(slot, region)] = version

    def start(self, pending: Pending) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            missing = [r for r in pending.servers if self.reports.get((pending.slot, r)) != pending.version]
            if not missing:
                return
            time.sleep(0.2)
        raise SupervisorError(
            f"model servers of {pending.slot} in {', '.join(missing)} did not report version "
            f"{pending.version} within {self.start_timeout:.0f}s (their agent logs say why)"
        )

    def stop(self, servers: dict[str, Server]) -> None:
        """Nothing to do here: a colour with no version in the state tells its agents to stop."""

    def adopt(self, servers: dict[str, Server]) -> dict[str, Server]:
        return servers
