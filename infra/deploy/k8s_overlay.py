"""A region's Kubernetes overlay (``infra/k8s/overlays/<region>/``): what differs per region.

* the namespace and ``xregion-local`` (the region, its MLflow server, its read-replica URI);
* Postgres: a CloudNativePG ``Cluster`` (the primary region's with ``initdb``, the others replica
  clusters), synchronous within the region when the regions file says ``replication: sync``, its
  parameters from the embedded platform's ``patroni.postgres_parameters``;
* MinIO: a Tenant, the ``s3`` Service and the ``minio-init`` Job (bucket with object lock, scoped
  users: ``minio.py``);
* the region's model servers, blue and green, each run by its agent with the region's read-only S3
  user (the variable names are the region's, so they are rendered here, not in the base);
* the front door's ``haproxy.cfg``: this region's colours, the other regions' front doors as backups;
* ServiceExports: what the other regions reach by its Multi-Cluster Services name.
"""

from __future__ import annotations

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded.auth import AUTH_DATABASE
from xregion.infra.embedded.patroni import postgres_parameters
from xregion.infra.serving.haproxy import SLOTS

from . import commands, credentials, frontdoor, minio
from .commands import auth_ini
from .common import CNPG_IMAGE, GENERATED, IMAGE, MINIO_IMAGE, ROUTER_API_PORT, dump, host_port
from .k8s_common import (
    CLUSTERSET,
    CONTAINER_SECURITY,
    MINIO_CONFIG_SECRET,
    PEER_PORT,
    PG_APP_SECRET,
    cluster_name,
    colour_service,
    container,
    deployment,
    hpa,
    http_probe,
    job,
    namespace,
    pdb,
    plain_env,
    pod_spec,
    secret_env,
    service,
)

# CloudNativePG sets these itself and refuses them in a Cluster (its "fixed parameters")
CNPG_MANAGED = {"wal_level", "hot_standby", "wal_log_hints"}


def cnpg_parameters(cfg: XRegionConfig) -> dict[str, str]:
    return {k: str(v) for k, v in postgres_parameters(cfg).items() if k not in CNPG_MANAGED}


def postgres_cluster(cfg: XRegionConfig, r: RegionConfig) -> dict:
    pg = cfg.postgres
    spec: dict = {
        "instances": 2,
        "imageName": CNPG_IMAGE,
        "primaryUpdateStrategy": "unsupervised",
        "storage": {"size": "20Gi"},
        "postgresql": {"parameters": cnpg_parameters(cfg)},
    }
    if pg.replication == "sync":  # synchronous within the region; the cross-region stream is async
        spec["minSyncReplicas"] = 1
        spec["maxSyncReplicas"] = 1
    if r.role == "primary":
        auth_db = [  # MLflow's auth app's users, beside the registry (the owner exists by now)
            f'CREATE DATABASE "{AUTH_DATABASE}" OWNER "{pg.user}"',
            f'REVOKE CONNECT ON DATABASE "{AUTH_DATABASE}" FROM PUBLIC',
            f'REVOKE CONNECT ON DATABASE "{pg.database}" FROM PUBLIC',
        ]
        spec["bootstrap"] = {
            "initdb": {
                "database": pg.database,
                "owner": pg.user,
                "secret": {"name": PG_APP_SECRET},
                "postInitSQL": auth_db,
            }
        }
    else:
        src = cluster_name(cfg.primary)
        spec["bootstrap"] = {"pg_basebackup": {"source": src}}
        spec["replica"] = {"enabled": True, "source": src}
        spec["externalClusters"] = [
            {
                "name": src,
                "connectionParameters": {
                    "host": cfg.primary.pg_host,
                    "port": str(cfg.primary.pg_port),
                    "user": "streaming_replica",
                    "dbname": "postgres",
                    "sslmode": "verify-full",
                },
                # copied from the primary region's namespace (see infra/DEPLOY.md)
                "sslKey": {"name": f"{src}-replication", "key": "tls.key"},
                "sslCert": {"name": f"{src}-replication", "key": "tls.crt"},
                "sslRootCert": {"name": f"{src}-ca", "key": "ca.crt"},
            }
        ]
    return {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": cluster_name(r)},
        "spec": spec,
    }


def _minio(r: RegionConfig, s3_port: int) -> list[dict]:
    tenant = {
        "apiVersion": "minio.min.io/v2",
        "kind": "Tenant",
        "metadata": {"name": "minio"},
        "spec": {
            "image": MINIO_IMAGE,
            "configuration": {"name": MINIO_CONFIG_SECRET},  # config.env: the root user, see DEPLOY.md
            "requestAutoCert": False,
            "pools": [
                {
                    "name": "pool-0",
                    "servers": 4,
                    "volumesPerServer": 1,
                    "volumeClaimTemplate": {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}},
                    },
                }
            ],
        },
    }
    s3 = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s3"},
        "spec": {
            "selector": {"v1.min.io/tenant": "minio"},
            "ports": [{"name": "s3", "port": s3_port, "targetPort": 9000}],
        },
    }
    # the root user comes from the Tenant's own config.env (sourced below), never from a second Secret
    init_env = {k: v for k, v in credentials.minio_init_env(r).items() if k not in credentials.minio_env(r)}
    init = {
        "name": "minio-init",
        "image": MINIO_IMAGE,
        "command": ["sh", "-c", f". /minio-config/config.env && exec sh {minio.INIT_DIR}/init.sh"],
        "env": plain_env(minio.init_plain_env(r, f"http://s3:{s3_port}")) + secret_env(init_env),
        "volumeMounts": [
            {"name": "minio-config", "mountPath": "/minio-config", "readOnly": True},
            {"name": "minio-init", "mountPath": minio.INIT_DIR, "readOnly": True},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": CONTAINER_SECURITY,
    }
    volumes = [
        {"name": "minio-config", "secret": {"secretName": MINIO_CONFIG_SECRET}},
        {"name": "minio-init", "configMap": {"name": "minio-init"}},
    ]
    pod = pod_spec([init], volumes)
    pod["volumes"] = volumes  # the MinIO image reads no regions file
    return [tenant, s3, job("minio-init", pod)]


def _model_servers(cfg: XRegionConfig, r: RegionConfig, port: int) -> list[dict]:
    env = plain_env(commands.serving_plain_env(cfg, r, f"http://router:{ROUTER_API_PORT}"))
    env += secret_env(credentials.model_server_env(r))
    docs = []
    for slot in SLOTS:
        name = colour_service(slot)
        c = container("model-server", commands.agent_argv(r.name, slot, port), env, "1", "3Gi")
        c["ports"] = [{"name": "http", "containerPort": port}]
        # ready while it serves: an idle colour has no endpoint, and HAProxy sees its server down
        c["readinessProbe"] = http_probe("/ping", "http", 5, 2)
        docs += [deployment(name, 2, pod_spec([c], [])), service(name, [("http", port)]), hpa(name, 2, 10), pdb(name)]
    return docs


def _exports(r: RegionConfig) -> list[dict]:
    # the router's smoke test and HAProxy reach the colours by their clusterset names too
    names = ["s3", f"{cluster_name(r)}-rw", "mlflow", "frontdoor-peer", *(colour_service(s) for s in SLOTS)]
    return [
        {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": n}}
        for n in names
    ]


def peer_address(region: RegionConfig) -> str:
    return f"frontdoor-peer.{namespace(region)}.{CLUSTERSET}:{PEER_PORT}"


def render_k8s_overlay(cfg: XRegionConfig, r: RegionConfig, ports: dict[str, int]) -> dict[str, str]:
    header = GENERATED.format(kind="k8s", src="base/regions.yaml")
    local = [
        f"XREGION_LOCAL_REGION={r.name}",
        f"MLFLOW_TRACKING_URI={r.mlflow_url}",
        f"XREGION_READ_REPLICA_URI={cfg.database_read_uri(r.name, password='')}",
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace(r),
        "labels": [{"pairs": {"xregion.io/region": r.name}}],
        "resources": [
            "../../base",
            "namespace.yaml",
            "postgres.yaml",
            "minio.yaml",
            "model-server.yaml",
            "service-exports.yaml",
        ],
        "configMapGenerator": [
            {"name": "xregion-local", "behavior": "replace", "literals": local},
            {"name": "xregion-auth", "behavior": "replace", "files": ["basic_auth.ini"]},
            {"name": "frontdoor-config", "files": ["haproxy.cfg"]},
            {"name": "minio-init", "files": [f"minio/{n}" for n in minio.init_files(r)]},
        ],
        "images": [{"name": "mlflow-xregion", "newName": IMAGE.split(":")[0], "newTag": IMAGE.split(":")[1]}],
    }
    fd = frontdoor.regional_front_door(cfg, r, peer_address, PEER_PORT)
    d = f"overlays/{r.name}/"
    files = {
        d + "kustomization.yaml": header + dump(kustomization),
        d + "namespace.yaml": header
        + dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace(r)}}),
        d + "postgres.yaml": header + dump(postgres_cluster(cfg, r)),
        d + "minio.yaml": header + dump(*_minio(r, host_port(r.s3.endpoint_url)[1])),
        d + "model-server.yaml": header + dump(*_model_servers(cfg, r, ports["serving"])),
        d + "service-exports.yaml": header + dump(*_exports(r)),
        d + "haproxy.cfg": frontdoor.render(fd, [r], header),
        d + "basic_auth.ini": header + auth_ini(cfg, r.name),
    }
    return files | {d + f"minio/{n}": text for n, text in minio.init_files(r).items()}
