"""A deployment's router (external mode) and HAProxy: no stack, a fake runtime API.

In a deployment the two restart independently, and HAProxy's servers are DNS names fixed in its
configuration (``set server addr`` refuses names). So the router puts its serving colour back the
first time it sees an HAProxy, and never tries to re-place a server there.
"""

from __future__ import annotations

import time

from xregion.config import load_config
from xregion.infra.serving.router import Router
from xregion.infra.serving.servers import ExternalServers
from xregion.infra.serving.state import RouterState, Slot, save_state

from ..deploy.helpers import COMPOSE_REGIONS


class FakeRuntimeAPI:
    def __init__(self, pid: str = "1@100"):
        self.pid = pid
        self.calls: list[tuple] = []

    def process_id(self) -> str:
        return self.pid

    def switch(self, map_file: str, backend: str) -> None:
        self.calls.append(("switch", backend))

    def set_server(self, backend: str, server: str, host: str, port: int) -> None:
        raise AssertionError(f"set server {backend}/{server} addr {host}: HAProxy refuses a DNS name there")


def _router(tmp_path, mode: str) -> tuple[Router, FakeRuntimeAPI]:
    cfg = load_config(COMPOSE_REGIONS)
    regions = [r.name for r in cfg.regions]
    green = ExternalServers(cfg, 0).plan("bk_green", "7", regions, {}, time.time()).servers
    blue = ExternalServers(cfg, 0).plan("bk_blue", "6", regions, {}, time.time()).servers
    state = RouterState(
        model="recsys",
        regions=regions,
        active="bk_green",
        slots={"bk_blue": Slot("6", blue), "bk_green": Slot("7", green)},
        mode=mode,
        api_port=5310,
    )
    save_state(tmp_path, state)
    router = Router(cfg, tmp_path)
    router.api = FakeRuntimeAPI()
    return router, router.api


def test_a_deployment_router_puts_its_colour_into_the_first_haproxy_it_sees(tmp_path):
    router, api = _router(tmp_path, "external")
    router._check_restarted()
    assert api.calls == [("switch", "bk_green")]  # the state's colour, not whatever the map file said
    router._check_restarted()  # the same HAProxy: nothing more to do
    assert api.calls == [("switch", "bk_green")]
    api.pid = "2@200"  # HAProxy restarted
    router._check_restarted()
    assert api.calls == [("switch", "bk_green")] * 2


def test_an_embedded_router_reapplies_only_after_a_restart(tmp_path):
    router, api = _router(tmp_path, "embedded")
    placed = []
    api.set_server = lambda backend, server, host, port: placed.append((backend, server, host, port))
    router._check_restarted()
    assert api.calls == [] and placed == []  # it rendered the configuration HAProxy started from
    api.pid = "2@200"
    router._check_restarted()
    assert api.calls == [("switch", "bk_green")]
    assert ("bk_green", "a", "model-server-a-green", 5201) in placed
