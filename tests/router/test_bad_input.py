"""Bad input is the client's problem: 4xx, never a backend marked down; oversized bodies refused;
only the scoring paths reach a backend. The HAProxy configuration for a subset of regions."""

from __future__ import annotations

import json
import time

import pytest
import requests

from xregion import events
from xregion.infra.serving import control, haproxy
from xregion.infra.serving.router import Router
from xregion.infra.serving.state import Policy

from .helpers import TUNING

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def test_bad_requests_get_4xx_and_never_mark_a_backend_down(serving):
    url = serving.frontend
    t0 = time.time()
    cases = [
        ("invalid JSON", dict(data="{not json", headers={"Content-Type": "application/json"}), 400),
        ("wrong schema", dict(json={"dataframe_records": [{"user": 3}]}), 400),
        ("wrong type", dict(json={"dataframe_records": [{"user_id": "abc"}]}), 400),
        ("no payload key", dict(json={"rows": [1]}), 400),
        ("wrong content type", dict(data="user_id\n3", headers={"Content-Type": "text/plain"}), 415),
        ("no content type", dict(data='{"dataframe_records": [{"user_id": 3}]}'), 415),
    ]
    for _ in range(20):  # far more than fall=2 consecutive failures, were they counted
        for name, kwargs, want in cases:
            r = requests.post(f"{url}/invocations", timeout=30, **kwargs)
            assert r.status_code == want, (name, r.status_code, r.text[:300])
    big = "x" * (TUNING.max_body_bytes + 1)
    r = requests.post(f"{url}/invocations", data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "fewer rows" in r.text
    r = requests.post(
        f"{url}/invocations",
        data=iter([big[:40000].encode(), big[40000:].encode()]),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )  # chunked: no Content-Length
    assert r.status_code == 413
    for path in ("/admin", "/api/2.0/mlflow/experiments/search", "/../etc/passwd", "/"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 404, path
    assert requests.get(f"{url}/invocations", timeout=30).status_code == 405
    ok = requests.post(f"{url}/invocations", json={"dataframe_records": [{"user_id": 3, "k": 10}]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["predictions"][0]["user_id"] == 3
    assert requests.get(f"{url}/ping", timeout=30).status_code == 200

    st = control.serving_status(serving.cfg, serving.home)
    active = [s for s in st["servers"] if s["backend"] == st["active"] and s["server"] != "BACKEND"]
    assert {s["server"] for s in active} == {"a", "b"} and all(s["status"] == "UP" for s in active), active
    assert sum(s["errors_4xx"] for s in active) >= 80  # 4 of the cases reach a server (415s are the front door's)
    assert events.read(serving.home, kind="serving.server_down", since=t0) == []


def test_front_door_for_a_subset_of_regions(stack, tmp_path):
    servers = {"bk_blue": {"a": "127.0.0.1:5999"}, "bk_green": {"a": None}}
    fd = haproxy.embedded_front_door(("127.0.0.1", 5998), ("127.0.0.1", 5997), tmp_path, servers, "bk_blue", TUNING)
    path = haproxy.write(fd, ["a", "b"], tmp_path / "haproxy.cfg")
    haproxy.check_config(path)  # haproxy -c accepts it
    text = path.read_text()
    assert "server a 127.0.0.1:5999" in text and "server b" not in text
    assert f"inter {TUNING.inter_ms}ms" in text and "option redispatch" in text
    # retried elsewhere only when the connection failed, never after a 5xx or a response timeout
    assert "retry-on conn-failure empty-response\n" in text
    assert (path.stat().st_mode & 0o777) == 0o600 and "mode 600" in text
    assert (tmp_path / "haproxy" / "active.map").read_text().split() == ["active", "bk_blue"]
    json.dumps(Policy().__dict__)  # the policy is stored in the state file as JSON


def test_watch_only_router_on_a_platform_haproxy(serving, tmp_path):
    """Without a state file (compose, Kubernetes) the router only watches HAProxy's runtime API."""
    r = Router(serving.cfg, tmp_path, runtime_api=str(haproxy.paths(serving.home)["socket"]))
    assert r.managed is False
    rows = r.observe()
    assert {(x["pxname"], x["svname"]) for x in rows} >= {("bk_blue", "a"), ("bk_blue", "b")}
    assert r.server_status[("bk_blue", "a")].startswith(("UP", "MAINT"))
    r.follow()  # a watcher never deploys
    assert r.bake is None and not (tmp_path / "router").exists()
