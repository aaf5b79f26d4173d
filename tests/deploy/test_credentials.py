"""Least privilege: each service gets exactly its own secrets, checked against a table written here
(not the generator's), and the example env files cover every secret with a placeholder."""

from __future__ import annotations

import pytest
import yaml
from dotenv import dotenv_values

from .helpers import COMPOSE_DIR, K8S_DIR, compose_config, compose_file, k8s_config, kustomize_build, referenced

S3_PLATFORM = {"XREGION_A_ACCESS_KEY", "XREGION_A_SECRET_KEY", "XREGION_B_ACCESS_KEY", "XREGION_B_SECRET_KEY"}
ACCOUNTS = {
    "XREGION_MLFLOW_SCIENTIST_PASSWORD",
    "XREGION_MLFLOW_RELEASE_MANAGER_PASSWORD",
    "XREGION_MLFLOW_ROUTER_PASSWORD",
    "XREGION_MLFLOW_SERVING_PASSWORD",
}
PATRONI = {
    "PATRONI_SUPERUSER_PASSWORD",
    "PATRONI_REPLICATION_PASSWORD",
    "PATRONI_REWIND_PASSWORD",
    "PATRONI_RESTAPI_PASSWORD",
}
AUTH_APP = {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}


def _minio(r: str) -> dict[str, set[str]]:
    root = {f"XREGION_{r}_MINIO_ROOT_USER", f"XREGION_{r}_MINIO_ROOT_PASSWORD"}
    own = {
        f"XREGION_{r}_ACCESS_KEY",
        f"XREGION_{r}_SECRET_KEY",
        f"XREGION_{r}_READER_ACCESS_KEY",
        f"XREGION_{r}_READER_SECRET_KEY",
    }
    return {f"minio-{r.lower()}": root, f"minio-init-{r.lower()}": root | own}


def _serving(r: str) -> set[str]:
    return {
        f"XREGION_{r}_READER_ACCESS_KEY",
        f"XREGION_{r}_READER_SECRET_KEY",
        "XREGION_MLFLOW_SERVING_PASSWORD",
        "XREGION_ROUTER_TOKEN",
    }


# service -> the env-file variables it may refer to, and no other
COMPOSE_ALLOWED: dict[str, set[str]] = {
    **_minio("A"),
    **_minio("B"),
    "etcd-a": {"XREGION_ETCD_CLUSTER_TOKEN"},
    "etcd-b": {"XREGION_ETCD_CLUSTER_TOKEN"},
    "etcd-witness": {"XREGION_ETCD_CLUSTER_TOKEN"},
    "postgres-a": PATRONI,
    "postgres-b": PATRONI,
    "database": {"PATRONI_SUPERUSER_PASSWORD", "PGPASSWORD", "XREGION_DR_PASSWORD"},
    "mlflow-a": S3_PLATFORM | {"PGPASSWORD"} | AUTH_APP,
    "mlflow-b": S3_PLATFORM | {"PGPASSWORD"} | AUTH_APP,
    "accounts": ACCOUNTS | {"MLFLOW_AUTH_ADMIN_PASSWORD"},
    "replicate": S3_PLATFORM,
    "model-server-a-blue": _serving("A"),
    "model-server-a-green": _serving("A"),
    "model-server-b-blue": _serving("B"),
    "model-server-b-green": _serving("B"),
    "router": {"XREGION_MLFLOW_ROUTER_PASSWORD", "XREGION_ROUTER_TOKEN"},
    "haproxy": {"XREGION_HAPROXY_STATS_PASSWORD"},
    "locust-master": set(),  # serving traffic only
    "locust-worker": set(),
    "xregion": {"XREGION_MLFLOW_RELEASE_MANAGER_PASSWORD"},
}


def test_each_compose_service_gets_exactly_its_own_secrets():
    services = compose_file()["services"]
    assert set(services) == set(COMPOSE_ALLOWED), "a service was added or removed: give it a row in the table"
    got = {name: referenced(svc) for name, svc in services.items()}
    assert got == COMPOSE_ALLOWED


def test_a_model_server_sees_its_read_only_key_under_the_regions_file_name():
    cfg = compose_config()
    for r in cfg.regions:
        env = compose_file()["services"][f"model-server-{r.name}-blue"]["environment"]
        reader = f"XREGION_{r.name.upper()}_READER_ACCESS_KEY"
        assert env[r.s3.access_key_env] == env["AWS_ACCESS_KEY_ID"] == f"${{{reader}:?see .env.example}}"
        assert env["MLFLOW_TRACKING_USERNAME"] == "xregion-serving"
        others = [o for o in cfg.regions if o.name != r.name]
        assert not any(o.s3.access_key_env in env for o in others)  # no other region's store


def test_no_secret_value_is_rendered():
    """Every secret-looking entry of the compose file is a reference, never a value."""
    for name, svc in compose_file()["services"].items():
        env = svc.get("environment", {})
        for var, value in env.items():
            if any(w in var for w in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "ROOT_USER")):
                assert str(value).startswith("${") and str(value).endswith(":?see .env.example}"), (name, var)


def test_env_example_covers_every_referenced_variable_with_placeholders():
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    example = dotenv_values(COMPOSE_DIR / ".env.example")
    assert set().union(*COMPOSE_ALLOWED.values()) == set(example) == referenced(yaml.safe_load(text))
    for var, value in example.items():
        if var.endswith(("SECRET_KEY", "PASSWORD", "TOKEN")):
            assert value.startswith("replace-me"), f"{var} in .env.example must be a placeholder"
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()


# --- Kubernetes: (Secret, key) per container --------------------------------------------------------
def _k8s_allowed(region: str) -> dict[tuple[str, str], set[tuple[str, str]]]:
    r = region.upper()
    creds = "xregion-credentials"

    def keys(names):
        return {(creds, n) for n in names}

    serving = keys(
        {
            f"XREGION_{r}_READER_ACCESS_KEY",
            f"XREGION_{r}_READER_SECRET_KEY",
            "XREGION_MLFLOW_SERVING_PASSWORD",
            "XREGION_ROUTER_TOKEN",
        }
    )
    return {
        ("mlflow", "mlflow"): keys(S3_PLATFORM | AUTH_APP) | {("xregion-pg-app", "password")},
        ("replicate", "replicate"): keys(S3_PLATFORM),
        ("frontdoor", "haproxy"): keys({"XREGION_HAPROXY_STATS_PASSWORD"}),
        ("frontdoor", "router"): keys({"XREGION_MLFLOW_ROUTER_PASSWORD", "XREGION_ROUTER_TOKEN"}),
        ("model-server-blue", "model-server"): serving,
        ("model-server-green", "model-server"): serving,
        ("locust-master", "locust"): set(),
        ("locust-worker", "locust"): set(),
        ("mlflow-accounts", "accounts"): keys(ACCOUNTS | {"MLFLOW_AUTH_ADMIN_PASSWORD"}),
        # MinIO's root user only through the Tenant's own config.env, mounted as a file
        ("minio-init", "minio-init"): keys(
            {
                f"XREGION_{r}_ACCESS_KEY",
                f"XREGION_{r}_SECRET_KEY",
                f"XREGION_{r}_READER_ACCESS_KEY",
                f"XREGION_{r}_READER_SECRET_KEY",
            }
        ),
    }


@pytest.mark.parametrize("region", [r.name for r in k8s_config().regions])
def test_each_k8s_container_gets_exactly_its_own_secret_keys(region):
    got = {}
    for doc in kustomize_build(K8S_DIR / "overlays" / region):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            refs = {
                (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for e in c.get("env", [])
                if "valueFrom" in e
            }
            assert not c.get("envFrom") or all("secretRef" not in e for e in c["envFrom"]), "no Secret whole"
            got[(doc["metadata"]["name"], c["name"])] = refs
    assert got == _k8s_allowed(region)
    example = dotenv_values(K8S_DIR / "secrets.env.example")
    used = {key for keys in got.values() for secret, key in keys if secret == "xregion-credentials"}
    assert used <= set(example)
