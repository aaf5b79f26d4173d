"""The deployments' front doors, rendered by the one HAProxy renderer (``infra/serving/haproxy.py``).

Compose: one global front door serving every region's colours. Kubernetes: one per region,
serving its own region's colours, with the other regions' front doors as backup servers (through
their peer frontend, which never hands a request on). Either way the servers are the DNS names
where the platform runs each region's model server of each colour (``colour_address``), the
runtime API and the request log are unix sockets in the directory HAProxy shares with the router
only (``haproxy.paths`` of the router's XREGION_HOME, so both sides agree by construction), and
the timings and limits are the embedded platform's defaults (``Tuning()``), never the generating
machine's environment.
"""

from __future__ import annotations

from pathlib import Path

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.serving import haproxy
from xregion.infra.serving.servers import colour_address

from .common import ROUTER_HOME, host_port

RUNTIME_PATHS = haproxy.paths(Path(ROUTER_HOME))
RUNTIME_DIR = str(RUNTIME_PATHS["dir"])  # the volume HAProxy and the router share
MAP_FILE = str(RUNTIME_PATHS["map"])
INITIAL_COLOUR = haproxy.SLOTS[0]  # the router's first state serves the production version on blue


def _front_door(
    cfg: XRegionConfig, regions: list[RegionConfig], peers: dict[str, str], peer_port: int | None
) -> haproxy.FrontDoor:
    _, front = host_port(cfg.serving.frontend_url)
    _, stats = host_port(cfg.serving.haproxy_stats_url)
    servers = {
        slot: {r.name: "{}:{}".format(*colour_address(r.serving_url, slot)) for r in regions} for slot in haproxy.SLOTS
    }
    return haproxy.FrontDoor(
        bind=f":{front}",
        stats_bind=f":{stats}",
        runtime_socket=str(RUNTIME_PATHS["socket"]),
        log_socket=str(RUNTIME_PATHS["log"]),
        map_file=MAP_FILE,
        active=INITIAL_COLOUR,
        servers=servers,
        tuning=haproxy.Tuning(),
        dns=True,
        peers=peers,
        peer_bind=f":{peer_port}" if peer_port else None,
    )


def compose_front_door(cfg: XRegionConfig) -> haproxy.FrontDoor:
    return _front_door(cfg, cfg.regions, {}, None)


def regional_front_door(cfg: XRegionConfig, region: RegionConfig, peer_address, peer_port: int) -> haproxy.FrontDoor:
    """``peer_address(other region)`` is where that region's peer frontend is reached (host:port)."""
    others = [r for r in cfg.write_order() if r.name != region.name]
    return _front_door(cfg, [region], {r.name: peer_address(r) for r in others}, peer_port)


def render(fd: haproxy.FrontDoor, regions: list[RegionConfig], header: str) -> str:
    return haproxy.render(fd, [r.name for r in regions], header)
