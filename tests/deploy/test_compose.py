"""The docker-compose deployment: lint, structure, and agreement of every service's command, ports
and environment with the regions file (no Docker engine here: parsed and checked offline)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from xregion.infra.deploy import generate as deploy

from .helpers import COMPOSE_DIR, INFRA, ROOT, compose_config, lint

COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
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
    "network_mode",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def cfg():
    return compose_config()


def arg(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_yaml_lint():
    problems = [p for f in sorted(COMPOSE_DIR.glob("*.y*ml")) for p in lint(f)]
    assert problems == []


def test_structure(compose):
    assert set(compose) <= {"name", "services", "volumes", "networks"}
    services = compose["services"]
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unexpected keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc, name
        deps = svc.get("depends_on", [])
        for dep, cond in deps.items() if isinstance(deps, dict) else ((d, None) for d in deps):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond is None or cond["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )
            if cond and cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no check"
        if mode := svc.get("network_mode"):
            assert mode.startswith("service:") and mode.removeprefix("service:") in services
            assert "ports" not in svc
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("."):  # bind mount, relative to the compose file; inputs must exist
                assert not vol.endswith(":ro") or (COMPOSE_DIR / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
        if build := svc.get("build"):
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert context == ROOT and (context / build["dockerfile"]).is_file()


def test_every_long_running_service_has_a_health_check(compose):
    for name, svc in compose["services"].items():
        one_shot = svc.get("restart") == "no" or "profiles" in svc
        if one_shot or name == "control-plane":
            continue  # control plane: PID 1 of its container, restarted on exit; no health endpoint yet
        check = svc["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, name


def test_every_region_has_its_services(compose, cfg):
    services = compose["services"]
    for r in cfg.regions:
        for comp in ("minio", "postgres", "mlflow", "model-server"):
            assert f"{comp}-{r.name}" in services
    assert {"haproxy", "control-plane", "buckets", "locust-master", "locust-worker"} <= set(services)


def test_minio_and_postgres_agree_with_the_regions_file(compose, cfg):
    services = compose["services"]
    for r in cfg.regions:
        minio = services[f"minio-{r.name}"]
        assert deploy.host_port(r.s3.endpoint_url)[0] == f"minio-{r.name}"
        assert arg(minio["command"], "--address") == f":{deploy.host_port(r.s3.endpoint_url)[1]}"
        assert minio["environment"] == {
            "MINIO_ROOT_USER": f"${{{r.s3.access_key_env}:?see .env.example}}",
            "MINIO_ROOT_PASSWORD": f"${{{r.s3.secret_key_env}:?see .env.example}}",
        }
        pg = services[f"postgres-{r.name}"]
        assert r.pg_host == f"postgres-{r.name}"
        assert arg(pg["command"], "-c") == f"port={r.pg_port}"
        assert arg(pg["healthcheck"]["test"], "-p") == str(r.pg_port)
        assert arg(pg["healthcheck"]["test"], "-d") == cfg.postgres.database
        if r.role == "primary":
            env = pg["environment"]
            assert env["POSTGRES_DB"] == cfg.postgres.database and env["POSTGRES_USER"] == cfg.postgres.user
            assert env["POSTGRES_PASSWORD"].startswith(f"${{{cfg.postgres.password_env}:?")
        else:  # a streaming standby cloned from the primary
            env = pg["environment"]
            assert (env["XREGION_PRIMARY_HOST"], env["XREGION_PRIMARY_PORT"]) == (
                cfg.primary.pg_host,
                str(cfg.primary.pg_port),
            )
            assert pg["entrypoint"] == ["bash", "/xregion/standby.sh"]
            assert pg["depends_on"] == {f"postgres-{cfg.primary.name}": {"condition": "service_healthy"}}


def test_mlflow_servers_agree_with_the_regions_file(compose, cfg):
    for r in cfg.regions:
        svc = compose["services"][f"mlflow-{r.name}"]
        host, port = deploy.host_port(r.mlflow_url)
        assert svc["command"][:15] == [
            "mlflow",
            "server",
            "--backend-store-uri",
            cfg.database_uri(password=""),
            "--registry-store-uri",
            "xregion+" + cfg.database_uri(password=""),  # the promotion gate
            "--artifacts-destination",
            f"xregion:///{cfg.artifacts.prefix}",
            "--serve-artifacts",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        assert "target_session_attrs=read-write" in arg(svc["command"], "--backend-store-uri")
        assert all(f"host={x.postgres}" in arg(svc["command"], "--backend-store-uri") for x in cfg.regions)
        assert f"{host}:{port}" in arg(svc["command"], "--allowed-hosts").split(",")
        assert svc["ports"] == [f"{port}:{port}"]
        assert f"http://127.0.0.1:{port}/health" in svc["healthcheck"]["test"][-1]
        _platform_env(svc, cfg, r.name)


def test_model_servers_agree_with_the_regions_file(compose, cfg):
    for r in cfg.regions:
        svc = compose["services"][f"model-server-{r.name}"]
        host, port = deploy.host_port(r.serving_url)
        assert svc["command"] == [
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{cfg.registry.model_name}@{cfg.registry.production_alias}",
            "--env-manager",
            "local",
            "-h",
            "0.0.0.0",
            "-p",
            str(port),
        ]
        assert svc["environment"]["MLFLOW_TRACKING_URI"] == r.mlflow_url
        assert f"http://127.0.0.1:{port}/ping" in svc["healthcheck"]["test"][-1]
        _platform_env(svc, cfg, r.name)


def _platform_env(svc: dict, cfg, region: str | None) -> None:
    env = svc["environment"]
    assert env["XREGION_CONFIG"] == deploy.CONFIG_MOUNT
    assert f"./regions.yaml:{deploy.CONFIG_MOUNT}:ro" in svc["volumes"]
    if region:
        assert env["XREGION_LOCAL_REGION"] == region
    for var in deploy.credential_vars(cfg):  # every region's S3 credentials and the DB password
        assert env[var] == f"${{{var}:?see .env.example}}"


def test_front_door_control_plane_and_locust(compose, cfg):
    services = compose["services"]
    _, front = deploy.host_port(cfg.serving.frontend_url)
    _, stats = deploy.host_port(cfg.serving.haproxy_stats_url)
    assert services["haproxy"]["ports"] == [f"{front}:{front}", f"{stats}:{stats}"]
    assert f"/dev/tcp/127.0.0.1/{front}" in services["haproxy"]["healthcheck"]["test"][-1]
    haproxy = (COMPOSE_DIR / "haproxy.cfg").read_text()
    assert f"bind :{front}\n" in haproxy and f"bind :{stats}\n" in haproxy
    servers = re.findall(r"^\s+server (\S+) (\S+)( backup)?$", haproxy, re.M)
    assert servers == [
        (
            r.name,
            f"{deploy.host_port(r.serving_url)[0]}:{deploy.host_port(r.serving_url)[1]}",
            "" if r.role == "primary" else " backup",
        )
        for r in cfg.write_order()
    ]
    plane = services["control-plane"]
    assert plane["command"] == ["xregion", "router", "run"]
    assert plane["network_mode"] == "service:haproxy"
    assert f"stats socket ipv4@{plane['environment']['XREGION_HAPROXY_RUNTIME_API']} level admin" in haproxy
    _platform_env(plane, cfg, cfg.primary.name)
    master, worker = services["locust-master"], services["locust-worker"]
    assert master["command"][:4] == ["locust", "-f", "/app/loadtests/locustfile.py", "--master"]
    assert arg(master["command"], "--host") == cfg.serving.frontend_url
    assert worker["command"][:4] == ["locust", "-f", "/app/loadtests/locustfile.py", "--worker"]
    assert arg(worker["command"], "--master-host") == "locust-master"
    assert arg(worker["command"], "--master-port") == arg(master["command"], "--master-bind-port")
    assert services["buckets"]["command"] == ["python", "-m", "xregion.infra.deploy", "buckets"]


def test_env_example_covers_every_variable_and_holds_no_secret(compose, cfg):
    text = COMPOSE_FILE.read_text()
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    example = dotenv_values(COMPOSE_DIR / ".env.example")
    assert referenced == set(example), f"in compose, not in .env.example: {referenced - set(example)}"
    for var, value in example.items():
        if var.endswith(("SECRET_KEY", "PASSWORD")):
            assert value.startswith("replace-me"), f"{var} in .env.example must be a placeholder"
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()
    for var in deploy.credential_vars(cfg):
        assert var in example


def test_postgres_scripts_are_valid_bash():
    import subprocess

    for script in sorted((COMPOSE_DIR / "postgres").glob("*.sh")):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
    standby = (COMPOSE_DIR / "postgres" / "standby.sh").read_text()
    assert "pg_basebackup" in standby and " -R " in standby and 'exec "$@"' in standby


def test_the_image_installs_the_project_and_ships_the_locustfile():
    dockerfile = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")  # join continued lines
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    assert "COPY . /app" in lines
    run = next(line for line in lines if line.startswith("RUN"))
    assert shlex.split(run)[1:3] == ["pip", "install"] and "/app" in shlex.split(run)
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", ".xregion"} <= set(ignored)
    assert Path(deploy.LOCUSTFILE).relative_to("/app").parts[0] == "loadtests"  # the repo's folder
