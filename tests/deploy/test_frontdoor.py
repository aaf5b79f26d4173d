"""The deployments' front doors are the tested one: ``haproxy.render`` of a FrontDoor built here from
the regions file, valid for ``haproxy -c``, with the runtime API and the request log in a volume
that HAProxy shares with the router only. And two regional front doors backing each other up do
not bounce a request between them (real HAProxy processes on loopback)."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from xregion.infra.serving import haproxy
from xregion.infra.serving.servers import colour_address
from xregion.net import free_port

from .helpers import COMPOSE_DIR, K8S_DIR, compose_config, compose_file, haproxy_check, k8s_config, kustomize_build

ROUTER_HOME = Path("/var/lib/xregion")  # the image's XREGION_HOME: where the router looks for them
RUNTIME = haproxy.paths(ROUTER_HOME)


def expected(cfg, regions, peers=None, peer_bind=None) -> haproxy.FrontDoor:
    def port(url):
        return url.rsplit(":", 1)[1]

    return haproxy.FrontDoor(
        bind=f":{port(cfg.serving.frontend_url)}",
        stats_bind=f":{port(cfg.serving.haproxy_stats_url)}",
        runtime_socket=str(RUNTIME["socket"]),
        log_socket=str(RUNTIME["log"]),
        map_file=str(RUNTIME["map"]),
        active="bk_blue",
        servers={
            s: {r.name: "{}:{}".format(*colour_address(r.serving_url, s)) for r in regions} for s in haproxy.SLOTS
        },
        dns=True,
        peers=peers or {},
        peer_bind=peer_bind,
    )


def _strip_header(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("# ")) + "\n"


def test_compose_front_door_is_the_one_renderer_serving_every_region():
    cfg = compose_config()
    text = (COMPOSE_DIR / "haproxy.cfg").read_text()
    assert _strip_header(text) == _strip_header(
        haproxy.render(expected(cfg, cfg.regions), [r.name for r in cfg.regions])
    )
    assert "server a model-server-a-blue:5201" in text and "server b model-server-b-green:5202" in text
    assert "backup" not in text  # one global front door: every region's servers are active


@pytest.mark.parametrize("region", [r.name for r in k8s_config().regions])
def test_a_regional_front_door_serves_its_region_and_backs_up_to_the_others(region):
    cfg = k8s_config()
    r = cfg.region(region)
    others = [o for o in cfg.write_order() if o.name != region]
    peers = {o.name: f"frontdoor-peer.xregion-{o.name}.svc.clusterset.local:8090" for o in others}
    text = (K8S_DIR / "overlays" / region / "haproxy.cfg").read_text()
    want = haproxy.render(expected(cfg, [r], peers, ":8090"), [region])
    assert _strip_header(text) == _strip_header(want)
    for o in others:
        assert f"server peer-{o.name} frontdoor-peer.xregion-{o.name}.svc.clusterset.local:8090 backup" in text
    # the overlay's ConfigMap carries exactly this file
    cm = next(
        d
        for d in kustomize_build(K8S_DIR / "overlays" / region)
        if d["metadata"]["name"].startswith("frontdoor-config")
    )
    assert cm["data"]["haproxy.cfg"] == text


def test_every_rendered_front_door_passes_haproxy_check():
    files = [COMPOSE_DIR / "haproxy.cfg", *sorted(K8S_DIR.glob("overlays/*/haproxy.cfg"))]
    for path in files:
        text = path.read_text()
        assert f"stats socket {RUNTIME['socket']} mode 600 level admin" in text
        assert f"log {RUNTIME['log']} " in text
        assert 'insecure-password "${XREGION_HAPROXY_STATS_PASSWORD}"' in text
        assert "http-request return status 413" in text and "deny_status 404" in text
        assert "retry-on conn-failure empty-response\n" in text  # never replays a 5xx or a timeout
        proc = haproxy_check(text, str(RUNTIME["dir"]))
        assert proc.returncode == 0, f"{path}: {proc.stdout}{proc.stderr}"


def test_haproxy_check_catches_a_broken_configuration():
    text = (COMPOSE_DIR / "haproxy.cfg").read_text().replace("retry-on conn-failure", "retry-on conn-failures")
    proc = haproxy_check(text, str(RUNTIME["dir"]))
    assert proc.returncode != 0 and "conn-failures" in proc.stdout + proc.stderr


def test_the_runtime_volume_is_shared_by_haproxy_and_the_router_only():
    services = compose_file()["services"]
    users = {n for n, s in services.items() if any(str(v).startswith("frontdoor-run:") for v in s.get("volumes", []))}
    assert users == {"haproxy", "router"}
    assert f"frontdoor-run:{RUNTIME['dir']}" in services["haproxy"]["volumes"]
    assert f"frontdoor-run:{RUNTIME['dir']}" in services["router"]["volumes"]
    assert services["haproxy"]["user"] == "10001:10001"  # the router's uid: the sockets are 0600
    assert "router-state:/var/lib/xregion" in services["router"]["volumes"]  # its state outlives it
    pod = next(
        d
        for d in kustomize_build(K8S_DIR / "overlays" / "a")
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "frontdoor"
    )["spec"]["template"]["spec"]
    mounting = {
        c["name"]
        for c in pod["containers"]
        for m in c["volumeMounts"]
        if m["name"] == "frontdoor-run" and m["mountPath"] == str(RUNTIME["dir"])
    }
    assert mounting == {"haproxy", "router"}
    assert {"name": "frontdoor-run", "emptyDir": {}} in pod["volumes"]


# --- two regional front doors on loopback -----------------------------------------------------------
class _ModelServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self._answer()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self):
        body = b'{"predictions": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _haproxy(d: Path, front: int, servers: dict, **kw) -> tuple[haproxy.FrontDoor, subprocess.Popen]:
    """A front door rendered into ``d`` and started, ``bk_blue`` active."""
    (d / "active.map").write_text("active bk_blue\n")
    fd = haproxy.FrontDoor(
        bind=f"127.0.0.1:{front}",
        stats_bind=f"127.0.0.1:{free_port()}",
        runtime_socket=str(d / "admin.sock"),
        log_socket=str(d / "log.sock"),
        map_file=str(d / "active.map"),
        active="bk_blue",
        servers=servers,
        **kw,
    )
    (d / "haproxy.cfg").write_text(haproxy.render(fd, list(servers["bk_blue"])))
    cmd = [haproxy.binary(), "-db", "-f", str(d / "haproxy.cfg")]
    return fd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _front_door(tmp: Path, name: str, server: str, peer_name: str, peer: str, front: int, peer_port: int):
    d = tmp / name
    d.mkdir()
    servers = {"bk_blue": {name: server}, "bk_green": {name: None}}
    return _haproxy(d, front, servers, peers={peer_name: peer}, peer_bind=f"127.0.0.1:{peer_port}")[1]


def _score(port: int) -> tuple[int, float]:
    t0 = time.monotonic()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=b"{}", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, time.monotonic() - t0
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic() - t0
    except OSError:  # not listening yet
        return 0, time.monotonic() - t0


def _until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return check()


def test_front_doors_fail_over_to_each_other_and_never_bounce_a_request(tmp_path):
    model = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelServer)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    dead = f"127.0.0.1:{free_port()}"  # region a's model server is gone
    fa, fb, pa, pb = free_port(), free_port(), free_port(), free_port()
    procs = [
        _front_door(tmp_path, "a", dead, "b", f"127.0.0.1:{pb}", fa, pa),
        _front_door(tmp_path, "b", f"127.0.0.1:{model.server_address[1]}", "a", f"127.0.0.1:{pa}", fb, pb),
    ]
    try:
        # a's clients are served by b's model server, through b's front door
        assert _until(lambda: _score(fa)[0] == 200), "region a's front door never fell back to region b"
        assert _score(fb)[0] == 200 and _score(pb)[0] == 200
        # what region b's front door would reach: a's peer frontend answers for region a only, and
        # never hands the request on to its own backup (region b), which could hand it back
        assert _score(pa)[0] == 503
        model.shutdown()
        model.server_close()
        # nothing serves anywhere: both answer 503 at once, never passing the request round
        assert _until(lambda: _score(fa)[0] == 503 and _score(fb)[0] == 503)
        for port in (fa, fb, pa, pb):
            status, took = _score(port)
            assert status == 503 and took < 2.0, (port, status, took)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


@pytest.mark.parametrize("error_limit, a_after", [(2, "DOWN"), (0, "UP")])
def test_traffic_takes_a_killed_server_out_before_any_health_check(tmp_path, error_limit, a_after):
    """Health checks a minute apart: none runs after the kill. With ``error_limit`` (observe layer4)
    the connections the requests themselves fail to open mark the killed server down; without it, it
    stays in rotation until a check. Either way every request is answered (retried on the other)."""
    stubs = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelServer) for _ in range(2)]
    for stub in stubs:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
    front = free_port()
    servers = {
        "bk_blue": {r: f"127.0.0.1:{s.server_address[1]}" for r, s in zip("ab", stubs, strict=True)},
        "bk_green": {"a": None, "b": None},
    }
    fd, proc = _haproxy(tmp_path, front, servers, tuning=haproxy.Tuning(inter_ms=60_000, error_limit=error_limit))
    api = haproxy.RuntimeAPI(fd.runtime_socket)

    def status() -> dict[str, str]:  # "UP 1/2" (a first check still to come) counts as UP
        return {r["svname"]: r["status"].split()[0] for r in api.stats() if r["pxname"] == "bk_blue"}

    try:
        assert _until(lambda: _score(front)[0] == 200), "the front door never answered"
        assert status() == {"a": "UP", "b": "UP", "BACKEND": "UP"}
        stubs[0].shutdown()
        stubs[0].server_close()  # region a's model server is gone: its port refuses connections
        assert [_score(front)[0] for _ in range(10)] == [200] * 10
        assert status() == {"a": a_after, "b": "UP", "BACKEND": "UP"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        stubs[1].shutdown()
