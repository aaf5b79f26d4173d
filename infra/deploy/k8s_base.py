"""The Kubernetes base (``infra/k8s/base/``): what every region's cluster runs the same way.

* ``mlflow``: the MLflow servers (auth app, read replica), pinned to the node of the replicator,
  whose ledger volume they share;
* ``replicate``: the replicator (one replica) and the ``ledger`` volume (ReadWriteOnce: SQLite);
* ``frontdoor``: HAProxy and the router in one pod, sharing an emptyDir for the runtime API and the
  request log (no other container sees it); the router's state on its own volume;
* ``mlflow-accounts``: the one-shot Job creating the platform's MLflow accounts;
* Locust master and workers (serving traffic only).

Region-specific values come from each overlay: the ConfigMap ``xregion-local`` (the region, its
MLflow server, its read-replica URI, used as ``$(VAR)`` in arguments), the front door's
``haproxy.cfg`` and everything under ``overlays/<region>/``.
"""

from __future__ import annotations

from xregion.config import XRegionConfig
from xregion.infra.embedded.auth import AUTH_DATABASE, server_ini

from . import commands, credentials, frontdoor
from .common import (
    AUTH_INI,
    GENERATED,
    HAPROXY_IMAGE,
    LEDGER_DIR,
    LOCUST_MASTER_PORT,
    LOCUST_WEB_PORT,
    REPLICATOR_METRICS_PORT,
    ROUTER_API_PORT,
    ROUTER_HOME,
    dump,
    host_port,
)
from .k8s_common import (
    CONTAINER_SECURITY,
    PEER_PORT,
    PG_APP_SECRET,
    config_env,
    container,
    deployment,
    http_probe,
    job,
    pdb,
    plain_env,
    pod_spec,
    pvc,
    secret_env,
    service,
)

AUTH_VOLUME = {"name": "auth", "configMap": {"name": "xregion-auth"}}
AUTH_MOUNT = {"name": "auth", "mountPath": AUTH_INI.rsplit("/", 1)[0], "readOnly": True}
LEDGER_VOLUME = {"name": "ledger", "persistentVolumeClaim": {"claimName": "ledger"}}
LEDGER_MOUNT = {"name": "ledger", "mountPath": LEDGER_DIR}
READ_REPLICA = "$(XREGION_READ_REPLICA_URI)"  # set per region in xregion-local
BESIDE_THE_LEDGER = {  # SQLite on a ReadWriteOnce volume: every pod that opens the ledger on one node
    "podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "replicate"}},
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }
}


def _mlflow(cfg: XRegionConfig, port: int) -> list[dict]:
    # any region's MLflow service name works in every cluster: each pod sets its own region
    hosts = sorted({f"{host_port(r.mlflow_url)[0]}:{port}" for r in cfg.regions} | {f"mlflow:{port}"})
    argv = commands.mlflow_argv(cfg, cfg.primary, [*hosts, "localhost:*", "127.0.0.1:*"])
    argv[argv.index("--read-replica-backend-store-uri") + 1] = READ_REPLICA
    env = plain_env({k: v for k, v in commands.mlflow_plain_env(None).items()})
    env += secret_env(credentials.mlflow_env(cfg, cfg.primary, database_password=False))
    env += secret_env({cfg.postgres.password_env: "password"}, PG_APP_SECRET)  # CloudNativePG's owner
    c = container("mlflow", argv, env, "500m", "2Gi", mounts=[AUTH_MOUNT, LEDGER_MOUNT])
    c["ports"] = [{"name": "http", "containerPort": port}]
    c["readinessProbe"] = http_probe("/health", "http", 5, 3)
    c["livenessProbe"] = http_probe("/health", "http", 10, 6)
    c["startupProbe"] = http_probe("/health", "http", 5, 60)
    pod = pod_spec([c], [AUTH_VOLUME, LEDGER_VOLUME], affinity=BESIDE_THE_LEDGER)
    return [deployment("mlflow", 2, pod), service("mlflow", [("http", port)]), pdb("mlflow")]


def _replicate(cfg: XRegionConfig) -> list[dict]:
    env = plain_env(commands.replicator_plain_env(cfg)) + secret_env(credentials.replicator_env(cfg))
    c = container("replicate", commands.replicator_argv(), env, "250m", "512Mi", mounts=[LEDGER_MOUNT])
    c["ports"] = [{"name": "metrics", "containerPort": REPLICATOR_METRICS_PORT}]
    c["readinessProbe"] = http_probe("/metrics", "metrics", 10, 3)
    c["livenessProbe"] = http_probe("/metrics", "metrics", 20, 6)
    return [deployment("replicate", 1, pod_spec([c], [LEDGER_VOLUME]), recreate=True), pvc("ledger", "5Gi")]


def _frontdoor(cfg: XRegionConfig) -> list[dict]:
    _, front = host_port(cfg.serving.frontend_url)
    _, stats = host_port(cfg.serving.haproxy_stats_url)
    run_mount = {"name": "frontdoor-run", "mountPath": frontdoor.RUNTIME_DIR}
    haproxy = {
        "name": "haproxy",
        "image": HAPROXY_IMAGE,
        "command": commands.haproxy_argv(frontdoor.MAP_FILE, frontdoor.INITIAL_COLOUR),
        "env": secret_env(credentials.haproxy_env()),
        "ports": [
            {"name": "http", "containerPort": front},
            {"name": "stats", "containerPort": stats},
            {"name": "peer", "containerPort": PEER_PORT},
        ],
        "volumeMounts": [
            {"name": "haproxy-config", "mountPath": "/usr/local/etc/haproxy", "readOnly": True},
            run_mount,
        ],
        "readinessProbe": http_probe("/haproxy-health", "http", 5, 2),
        "livenessProbe": http_probe("/haproxy-health", "http", 10, 6),
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": CONTAINER_SECURITY,
    }
    env = plain_env(commands.router_plain_env(cfg)) + secret_env(credentials.router_env())
    router = container(
        "router",
        commands.router_argv("$(XREGION_LOCAL_REGION)"),  # each region's router drives its own region
        env,
        "100m",
        "512Mi",
        mounts=[{"name": "router-state", "mountPath": ROUTER_HOME}, run_mount],
    )
    router["ports"] = [{"name": "api", "containerPort": ROUTER_API_PORT}]
    router["readinessProbe"] = http_probe("/healthz", "api", 10, 3)
    volumes = [
        {"name": "haproxy-config", "configMap": {"name": "frontdoor-config"}},
        {"name": "frontdoor-run", "emptyDir": {}},
        {"name": "router-state", "persistentVolumeClaim": {"claimName": "router-state"}},
    ]
    return [
        # one pod: HAProxy and the router that drives its runtime API through the shared socket
        deployment("frontdoor", 1, pod_spec([haproxy, router], volumes), recreate=True),
        pvc("router-state", "1Gi"),
        service("frontdoor", [("http", front)], type_="LoadBalancer"),  # the only public port
        service("frontdoor-peer", [("peer", PEER_PORT)], selector="frontdoor"),  # other regions' front doors
        service("frontdoor-admin", [("stats", stats)], selector="frontdoor"),
        service("router", [("api", ROUTER_API_PORT)], selector="frontdoor"),  # the model-server agents
    ]


def _accounts(cfg: XRegionConfig) -> list[dict]:
    argv = [*commands.job_argv("accounts"), "--url", "$(MLFLOW_TRACKING_URI)"]  # this region's server
    env = plain_env(config_env()) + secret_env(credentials.accounts_env())
    return [job("mlflow-accounts", pod_spec([container("accounts", argv, env, "100m", "512Mi")], []))]


def _locust(cfg: XRegionConfig) -> list[dict]:
    env = plain_env(config_env())  # serving traffic only: no credential
    master = container("locust", commands.locust_master_argv(cfg), env, "500m", "1Gi")
    master["ports"] = [
        {"name": "web", "containerPort": LOCUST_WEB_PORT},
        {"name": "master", "containerPort": LOCUST_MASTER_PORT},
    ]
    master["readinessProbe"] = http_probe("/", "web", 10, 3)
    worker = container("locust", commands.locust_worker_argv("locust-master"), env, "1", "1Gi")
    return [
        deployment("locust-master", 1, pod_spec([master], [])),
        service("locust-master", [("web", LOCUST_WEB_PORT), ("master", LOCUST_MASTER_PORT)]),
        deployment("locust-worker", 2, pod_spec([worker], [])),
    ]


def render_k8s_base(cfg: XRegionConfig, ports: dict[str, int]) -> dict[str, str]:
    parts = {
        "mlflow": _mlflow(cfg, ports["mlflow"]),
        "replicate": _replicate(cfg),
        "frontdoor": _frontdoor(cfg),
        "accounts": _accounts(cfg),
        "locust": _locust(cfg),
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "mlflow-xregion"}}],
        "resources": [f"{name}.yaml" for name in parts],
        "configMapGenerator": [
            {"name": "xregion-regions", "files": ["regions.yaml"]},
            {"name": "xregion-auth", "files": ["basic_auth.ini"]},
            {"name": "xregion-local", "literals": ["XREGION_LOCAL_REGION=set-by-overlay"]},
        ],
    }
    header = GENERATED.format(kind="k8s", src="base/regions.yaml")
    files = {f"base/{name}.yaml": header + dump(*docs) for name, docs in parts.items()}
    return {
        "base/kustomization.yaml": header + dump(kustomization),
        **files,
        "base/basic_auth.ini": header + server_ini(cfg.database_uri(password="", database=AUTH_DATABASE)),
        "secrets.env.example": credentials.env_example(credentials.k8s_variables(cfg), header + SECRETS_HEADER),
    }


SECRETS_HEADER = """# Example of the Secret xregion-credentials of every region's namespace (infra/DEPLOY.md):
#   kubectl -n xregion-<region> create secret generic xregion-credentials --from-env-file=secrets.env
# Placeholders, not secrets: replace EVERY value; never commit secrets.env. Each pod references only
# the keys it needs (infra/deploy/credentials.py). MinIO's root user is in the Secret minio-config,
# the mlflow role's password in xregion-pg-app (CloudNativePG's application owner).
"""
