"""Authentication everywhere, least privilege, and no secret lying around: tried as an attacker (or a
careless colleague) would, against a real stack and its front door."""

from __future__ import annotations

import json
import os
import stat

import pytest
import requests
from mlflow.exceptions import MlflowException

from tests.registry.helpers import client, log_tiny, unique
from tests.stacks import acting_as, mlflow_http
from xregion.infra.serving import haproxy
from xregion.infra.serving.control import STATS_PASSWORD, TOKEN
from xregion.plugins import registry_client
from xregion.plugins.registry_store import ACTOR_TAG, TRANSITION_TAG
from xregion.secrets import secret

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def test_every_mlflow_server_refuses_anonymous_and_wrong_passwords(stack):
    for r in stack.cfg.regions:
        for path in (
            "/api/2.0/mlflow/experiments/search?max_results=1",
            "/api/2.0/mlflow/registered-models/search",
            "/api/2.0/mlflow-artifacts/artifacts?path=mlartifacts",
        ):
            assert requests.get(r.mlflow_url + path, timeout=30).status_code == 401, (r.name, path)
            bad = requests.get(r.mlflow_url + path, auth=("admin", "not-the-password"), timeout=30)
            assert bad.status_code == 401, (r.name, path)
        assert (
            mlflow_http().get(r.mlflow_url + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=30).status_code
            == 200
        )


def test_cached_logins_refuse_a_wrong_password_and_a_deleted_account_ends_in_every_region(stack):
    """MLflow's login cache (auth.AUTH_CACHE_TTL_S) spares the password hash per request. A cached
    login must not let a wrong password in, and a deleted account ends at once where it was deleted
    and within the cache's lifetime everywhere else."""
    import time

    from xregion.infra.embedded.auth import AUTH_CACHE_TTL_S

    admin, (a, b) = mlflow_http(), (r.mlflow_url for r in stack.cfg.regions[:2])
    user, password = unique("cached"), "a-long-enough-password-1"
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    created = admin.post(a + "/api/2.0/mlflow/users/create", json={"username": user, "password": password}, timeout=30)
    assert created.status_code == 200, created.text
    for url in (a, b):
        assert requests.get(url + search, auth=(user, password), timeout=30).status_code == 200  # now cached
        assert requests.get(url + search, auth=(user, password + "x"), timeout=30).status_code == 401
    gone = admin.delete(a + "/api/2.0/mlflow/users/delete", json={"username": user}, timeout=30)
    assert gone.status_code == 200, gone.text
    assert requests.get(a + search, auth=(user, password), timeout=30).status_code == 401
    deadline = time.monotonic() + AUTH_CACHE_TTL_S + 30  # the cache's lifetime, and room for a busy machine
    while (status := requests.get(b + search, auth=(user, password), timeout=30).status_code) == 200:
        assert time.monotonic() < deadline, f"region b still accepts a deleted account after {AUTH_CACHE_TTL_S + 30} s"
        time.sleep(0.5)
    # 401 once the cache forgot the login; 404 while it remembers it, because MLflow then looks up
    # the deleted account's permissions and finds no such user: refused either way
    assert status in (401, 404), status


def test_roles_are_least_privilege(stack):
    """A scientist registers versions but cannot put one into production; the model servers' account
    only reads; a release manager promotes."""
    cfg = stack.cfg
    url = cfg.primary.mlflow_url
    model = cfg.registry.model_name  # the accounts' grants are on the platform's model
    with acting_as(stack, "scientist"):
        version = log_tiny(url, model, label="by-a-scientist")
        with pytest.raises(MlflowException) as err:
            registry_client.promote(client(url), cfg, model, version, reason="a scientist tries")
        assert err.value.get_http_status_code() == 403, err.value.message
    with acting_as(stack, "serving"):
        assert client(url).get_model_version(model, version).version == version  # it may read
        with pytest.raises(MlflowException) as err:
            client(url).set_model_version_tag(model, version, "tampered", "yes")
        assert err.value.get_http_status_code() == 403
    with acting_as(stack, "release-manager"):
        done = registry_client.promote(client(url), cfg, model, version, reason="release")
        assert done["stage"] == cfg.registry.production_stage


def test_the_transition_record_names_the_authenticated_user_not_the_claimed_one(stack):
    cfg = stack.cfg
    url = cfg.primary.mlflow_url
    name = unique("who")
    v = log_tiny(url, name)
    with acting_as(stack, "admin"):
        cl = client(url)
        cl.set_model_version_tag(name, v, ACTOR_TAG, "someone-else")  # a forged claim
        cl.transition_model_version_stage(name, v, cfg.registry.production_stage)
        records = [json.loads(t) for k, t in cl.get_model_version(name, v).tags.items() if k.startswith(TRANSITION_TAG)]
    assert [r["who"] for r in records] == ["admin"], records


def test_front_door_stats_and_router_api_need_credentials(serving):
    cfg, home = serving.cfg, serving.home
    stats = cfg.serving.haproxy_stats_url
    for path in ("/", "/metrics", "/;csv"):
        assert requests.get(stats + path, timeout=30).status_code == 401, path
    ok = requests.get(stats + "/;csv", auth=(haproxy.STATS_USER, secret(home, STATS_PASSWORD)), timeout=30)
    assert ok.status_code == 200 and "bk_blue" in ok.text
    from xregion.infra.serving.state import load_state

    api = f"http://127.0.0.1:{load_state(home).api_port}"
    assert requests.get(api + "/healthz", timeout=30).status_code == 200
    for path in ("/status", "/metrics", "/desired?region=a&slot=bk_blue"):
        assert requests.get(api + path, timeout=30).status_code == 401, path
        wrong = requests.get(api + path, headers={"Authorization": "Bearer guess"}, timeout=30)
        assert wrong.status_code == 401, path
    token = {"Authorization": f"Bearer {secret(home, TOKEN)}"}
    assert requests.get(api + "/status", headers=token, timeout=30).status_code == 200


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sockets_state_and_pid_files_are_private(serving):
    home = serving.home
    p = haproxy.paths(home)
    for path in (p["socket"], p["log"], p["cfg"], p["map"], home / "router" / "state.json"):
        assert _mode(path) == 0o600, path
    assert _mode(home / "secrets") == 0o700
    for path in (home / "secrets").iterdir():
        assert _mode(path) == 0o600, path
    for path in (home / "run").glob("*.json"):
        assert _mode(path) == 0o600, path


def test_no_secret_in_pid_files_logs_events_or_argv(serving):
    """Every secret of the platform (S3 keys, database and MLflow passwords, tokens) is only in a
    0600 file made for it; never in a pid file, a log, the event log, a report or a command line."""
    import psutil

    home = serving.home
    values = {p.read_text().strip() for p in (home / "secrets").iterdir() if p.suffix != ".pgpass"}
    values |= {v for v in json.loads((home / "secrets" / "passwords.json").read_text()).values()}
    values |= {os.environ[r.s3.secret_key_env] for r in serving.cfg.regions}
    values = {v for v in values if len(v) >= 12 and not v.startswith("{")}
    assert len(values) >= 8
    found = []
    for path in home.rglob("*"):
        if path.is_file() and "secrets" not in path.parts and path.stat().st_size < 50_000_000:
            text = path.read_bytes().decode(errors="replace")
            found += [str(path) for v in values if v in text]
    assert found == [], found
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        assert not [v for v in values if v in cmd], cmd[:200]
