"""The docker-compose deployment: lint, structure, and agreement of every service with the regions
file and with the embedded platform (no Docker engine here: parsed and checked offline)."""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from xregion.infra.embedded import auth, patroni, postgres
from xregion.infra.serving.haproxy import SLOTS
from xregion.infra.serving.servers import colour_address

from .helpers import COMPOSE_DIR, INFRA, ROOT, compose_config, compose_file, lint

SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "volumes",
    "ports",
    "depends_on",
    "healthcheck",
    "restart",
    "profiles",
    "user",
}
CONFIG_VOLUME = "./regions.yaml:/etc/xregion/regions.yaml:ro"


@pytest.fixture(scope="module")
def compose() -> dict:
    return compose_file()


@pytest.fixture(scope="module")
def cfg():
    return compose_config()


def arg(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_yaml_lint():
    files = sorted([*COMPOSE_DIR.glob("*.y*ml"), *COMPOSE_DIR.glob("patroni/*.yml")])
    assert len(files) >= 4
    assert [p for f in files for p in lint(f)] == []


def test_structure(compose):
    assert set(compose) == {"name", "services", "volumes", "networks"}
    services = compose["services"]
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unexpected keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc, name
        deps = svc.get("depends_on", [])
        for dep, cond in deps.items() if isinstance(deps, dict) else ((d, None) for d in deps):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond and cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no check"
            if cond and cond["condition"] == "service_completed_successfully":
                assert services[dep]["restart"] == "no", f"{name} waits for {dep} to finish; it is no one-shot"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("."):  # bind mount, relative to the compose file; inputs must exist
                assert not vol.endswith(":ro") or (COMPOSE_DIR / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
        if build := svc.get("build"):
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file() and context in (ROOT, COMPOSE_DIR / "patroni")


def test_every_long_running_service_has_a_health_check(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no" or "profiles" in svc or name.startswith("model-server-"):
            continue  # one-shots, tools; an idle colour serves nothing by design (HAProxy checks the other)
        check = svc["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, name


def test_ports_are_published_on_loopback_except_the_front_door(compose, cfg):
    front = cfg.serving.frontend_url.rsplit(":", 1)[1]
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            if port == f"{front}:{front}":
                assert name == "haproxy"
                continue
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_every_region_has_its_services(compose, cfg):
    services = compose["services"]
    for r in cfg.regions:
        for svc in ("minio", "minio-init", "etcd", "postgres", "mlflow"):
            assert f"{svc}-{r.name}" in services
        for slot in SLOTS:
            assert colour_address(r.serving_url, slot)[0] in services
    assert {"etcd-witness", "database", "accounts", "replicate", "router", "haproxy"} <= set(services)
    assert not (COMPOSE_DIR / "postgres").exists()  # standby.sh and primary-init.sh are gone: Patroni


def test_etcd_members_form_one_cluster_with_the_witness(compose, cfg):
    members = cfg.etcd_members()
    assert [n for n, _ in members] == [r.name for r in cfg.regions] + ["witness"]
    initial = ",".join(f"{n}=http://etcd-{n}:2380" for n, _ in members)
    for name, _ in members:
        env = compose["services"][f"etcd-{name}"]["environment"]
        assert env["ETCD_NAME"] == name and env["ETCD_INITIAL_CLUSTER"] == initial
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://etcd-{name}:2379"
        assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://etcd-{name}:2380"
        assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        assert env["ETCD_INITIAL_CLUSTER_TOKEN"] == "${XREGION_ETCD_CLUSTER_TOKEN:?see .env.example}"
        assert compose["services"][f"etcd-{name}"]["volumes"] == [f"etcd-{name}:/etcd-data"]


def _without_addresses(node: dict) -> dict:
    """A Patroni node's configuration less what differs between hosts: addresses, paths, passwords."""
    node = yaml.safe_load(yaml.safe_dump(node))
    for key in ("listen", "connect_address", "authentication"):
        node["restapi"].pop(key, None)
        node["postgresql"].pop(key, None)
    for key in ("data_dir", "bin_dir", "pgpass", "pg_hba"):
        node["postgresql"].pop(key)
    node.pop("etcd3")
    return node


def test_patroni_nodes_are_the_embedded_platforms_with_container_addresses(compose, cfg):
    with tempfile.TemporaryDirectory() as home:
        postgres.ensure_secrets(cfg, Path(home))
        embedded = {r.name: patroni.local_config(cfg, r, Path(home)) for r in cfg.regions}
    for r in cfg.regions:
        svc = compose["services"][f"postgres-{r.name}"]
        assert svc["command"] == ["patroni", "/etc/patroni.yml"] and svc["user"] == "postgres"
        assert f"./patroni/{r.name}.yml:/etc/patroni.yml:ro" in svc["volumes"]
        node = yaml.safe_load((COMPOSE_DIR / "patroni" / f"{r.name}.yml").read_text())
        assert _without_addresses(node) == _without_addresses(embedded[r.name])  # one settings source
        assert node["bootstrap"]["dcs"]["postgresql"]["parameters"] == patroni.postgres_parameters(cfg)
        assert node["bootstrap"]["dcs"]["synchronous_mode"] is True  # replication: sync
        assert node["postgresql"]["listen"] == "0.0.0.0:5432" and node["postgresql"]["connect_address"] == r.postgres
        assert node["restapi"]["listen"] == "0.0.0.0:8008" and node["restapi"]["connect_address"] == r.patroni
        assert node["etcd3"]["hosts"][0] == f"etcd-{r.name}:2379" and len(node["etcd3"]["hosts"]) == 3
        hba = node["postgresql"]["pg_hba"]
        assert hba and all(line.endswith(" scram-sha-256") for line in hba)
        assert {line.split()[3] for line in hba} == {"127.0.0.1/32", "172.29.0.0/24"}
        assert compose["networks"]["default"]["ipam"]["config"] == [{"subnet": "172.29.0.0/24"}]
        # no password in the file: Patroni reads them from its environment
        text = (COMPOSE_DIR / "patroni" / f"{r.name}.yml").read_text()
        assert "password" not in text.lower().replace("password_encryption", "")
        assert node["postgresql"]["authentication"] == {
            "superuser": {"username": "postgres"},
            "replication": {"username": "replicator"},
            "rewind": {"username": "rewind"},
        }
        assert set(svc["environment"]) == {
            "PATRONI_SUPERUSER_PASSWORD",
            "PATRONI_REPLICATION_PASSWORD",
            "PATRONI_REWIND_PASSWORD",
            "PATRONI_RESTAPI_PASSWORD",
        }


def test_the_patroni_image_pins_what_the_project_pins():
    dockerfile = (COMPOSE_DIR / "patroni" / "Dockerfile").read_text()
    pin = re.search(r'"(patroni\[etcd3\]==[0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert "FROM postgres:15-bookworm" in dockerfile.splitlines()
    assert f"'{pin}'" in dockerfile and "psycopg2" in dockerfile
    assert "USER postgres" in dockerfile and 'CMD ["patroni", "/etc/patroni.yml"]' in dockerfile


def test_mlflow_servers_run_the_embedded_command_with_auth_and_the_ledger(compose, cfg):
    for r in cfg.regions:
        # logins read the region's own node first (MLflow's read_database_uri), as tracking reads do
        ini = (COMPOSE_DIR / f"basic_auth-{r.name}.ini").read_text()
        read = cfg.database_read_uri(r.name, password="", database="mlflow_auth")
        assert ini.endswith(auth.server_ini(cfg.database_uri(password="", database="mlflow_auth"), read))
        assert read.index(f"host={r.postgres}") < 50
        svc = compose["services"][f"mlflow-{r.name}"]
        cmd = svc["command"]
        assert cmd[:2] == ["mlflow", "server"]
        assert arg(cmd, "--backend-store-uri") == cfg.database_uri(password="")
        assert arg(cmd, "--read-replica-backend-store-uri") == cfg.database_read_uri(r.name, password="")
        assert arg(cmd, "--read-replica-backend-store-uri").index(f"host={r.postgres}") < 50  # its own node first
        assert arg(cmd, "--registry-store-uri") == "xregion+" + cfg.database_uri(password="")
        assert arg(cmd, "--artifacts-destination") == f"xregion:///{cfg.artifacts.prefix}"
        assert arg(cmd, "--app-name") == "basic-auth" and arg(cmd, "--port") == r.mlflow_url.rsplit(":", 1)[1]
        env = svc["environment"]
        assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/xregion-auth/basic_auth.ini" and env["XREGION_AUTH"] == "1"
        assert f"./basic_auth-{r.name}.ini:/etc/xregion-auth/basic_auth.ini:ro" in svc["volumes"]
        assert env["XREGION_LEDGER"] == "/ledger/outbox.sqlite" and "ledger:/ledger" in svc["volumes"]
        assert env["XREGION_LOCAL_REGION"] == r.name and CONFIG_VOLUME in svc["volumes"]
        assert svc["depends_on"]["database"] == {"condition": "service_completed_successfully"}


def test_one_replicator_shares_the_ledger_with_every_mlflow_server(compose, cfg):
    services = compose["services"]
    users = {n for n, s in services.items() if "ledger:/ledger" in s.get("volumes", [])}
    assert users == {"replicate", *(f"mlflow-{r.name}" for r in cfg.regions)}
    rep = services["replicate"]
    assert rep["command"][:3] == ["xregion", "replicate", "run"] and arg(rep["command"], "--metrics-port")
    assert arg(rep["command"], "--metrics-host") == "0.0.0.0"
    assert rep["environment"]["XREGION_LEDGER"] == "/ledger/outbox.sqlite"
    assert arg(rep["command"], "--metrics-port") in rep["healthcheck"]["test"][-1]


def test_model_servers_run_the_agent_of_their_colour_never_an_alias(compose, cfg):
    for r in cfg.regions:
        for slot in SLOTS:
            host, port = colour_address(r.serving_url, slot)
            svc = compose["services"][host]
            assert svc["command"] == [
                "xregion",
                "router",
                "agent",
                "--region",
                r.name,
                "--slot",
                slot,
                "--port",
                str(port),
            ]
            env = svc["environment"]
            assert env["XREGION_ROUTER_URL"] == "http://router:5310"
            assert env["XREGION_ROUTER_TOKEN"] == "${XREGION_ROUTER_TOKEN:?see .env.example}"
            assert env["MLFLOW_TRACKING_URI"] == r.mlflow_url
    for name, svc in compose["services"].items():  # no service serves a floating alias
        text = yaml.safe_dump({k: svc.get(k) for k in ("command", "entrypoint", "environment")})
        assert "@" not in text.replace("@/", ""), f"{name} names an alias: {text}"
        assert "models serve" not in " ".join(map(str, svc.get("command", [])))


def test_the_router_runs_the_embedded_control_loop_beside_haproxy(compose, cfg):
    router = compose["services"]["router"]
    assert router["command"] == [
        "xregion",
        "router",
        "run",
        "--external",
        "--regions",
        ",".join(r.name for r in cfg.regions),
        "--api-host",
        "0.0.0.0",
        "--api-port",
        "5310",
    ]
    assert router["environment"]["MLFLOW_TRACKING_USERNAME"] == "xregion-router"
    haproxy = compose["services"]["haproxy"]
    _, front = cfg.serving.frontend_url.rsplit(":", 1)
    _, stats = cfg.serving.haproxy_stats_url.rsplit(":", 1)
    assert haproxy["ports"] == [f"{front}:{front}", f"127.0.0.1:{stats}:{stats}"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    script = haproxy["entrypoint"][-1]  # HAProxy refuses to start without its map file
    assert 'test -s "/var/lib/xregion/haproxy/active.map" || echo "active bk_blue"' in script
    assert script.endswith("exec haproxy -W -db -f /usr/local/etc/haproxy/haproxy.cfg")
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    assert subprocess.run(["sh", "-n", "-c", script + " ("], capture_output=True).returncode != 0  # the check bites
    assert "/haproxy-health" in haproxy["healthcheck"]["test"][-1]


def test_locust_sends_serving_traffic_only(compose, cfg):
    master, worker = compose["services"]["locust-master"], compose["services"]["locust-worker"]
    assert master["command"][:4] == ["locust", "-f", "/app/loadtests/locustfile.py", "--master"]
    assert arg(master["command"], "--host") == cfg.serving.frontend_url
    assert master["command"][-1] == worker["command"][-1] == "ServingUser"
    assert arg(worker["command"], "--master-host") == "locust-master"
    assert set(master["environment"]) == set(worker["environment"]) == {"XREGION_CONFIG"}


def test_the_one_shot_jobs(compose, cfg):
    services = compose["services"]
    assert services["database"]["command"] == ["python", "-m", "xregion.infra.deploy", "database"]
    assert services["accounts"]["command"] == ["python", "-m", "xregion.infra.deploy", "accounts"]
    assert services["accounts"]["depends_on"] == {f"mlflow-{cfg.primary.name}": {"condition": "service_healthy"}}
    assert services["router"]["depends_on"]["accounts"] == {"condition": "service_completed_successfully"}


def test_the_image_installs_the_project_and_owns_its_volumes():
    dockerfile = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")  # join continued lines
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    assert "COPY . /app" in lines
    run = next(line for line in lines if line.startswith("RUN"))
    assert shlex.split(run)[1:3] == ["pip", "install"] and "/app" in shlex.split(run)
    assert "/var/lib/xregion/haproxy" in run and "/ledger" in run and "chown -R 10001:10001" in run
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", ".xregion"} <= set(ignored)
    assert re.search(r'"mlflow\[auth\]', (ROOT / "pyproject.toml").read_text())  # the auth app needs Flask-WTF
