"""Kubernetes object builders shared by the base and the overlays, and the deployment's checks."""

from __future__ import annotations

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.serving.servers import colour_address

from .common import CNPG_PORT, CONFIG_MOUNT, IMAGE_UID, host_port, refuse

CLUSTERSET = "svc.clusterset.local"  # Kubernetes Multi-Cluster Services domain
CREDENTIALS_SECRET = "xregion-credentials"  # created from secrets.env (see secrets.env.example)
PG_APP_SECRET = "xregion-pg-app"  # CloudNativePG's application owner (basic-auth: username, password)
MINIO_CONFIG_SECRET = "minio-config"  # the MinIO Tenant's config.env: its root user
PEER_PORT = 8090  # a front door's peer frontend, reached by the other regions' front doors
REGIONS_VOLUME = {"name": "regions", "configMap": {"name": "xregion-regions"}}
REGIONS_MOUNT = {"name": "regions", "mountPath": "/etc/xregion", "readOnly": True}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def namespace(region: RegionConfig) -> str:
    return f"xregion-{region.name}"


def cluster_name(region: RegionConfig) -> str:
    return f"pg-{region.name}"


def colour_service(slot: str) -> str:
    """The Service of a region's model servers of one colour: where ``colour_address`` puts them."""
    return colour_address("http://model-server", slot)[0]


def _k8s_ports(cfg: XRegionConfig) -> tuple[dict[str, int], list[str]]:
    """One port per component: each region is its own cluster running the same base."""
    ports: dict[str, int] = {}
    wrong = []
    for r in cfg.regions:
        for comp, url in (("s3", r.s3.endpoint_url), ("mlflow", r.mlflow_url), ("serving", r.serving_url)):
            p = host_port(url)[1]
            if ports.setdefault(comp, p) != p:
                wrong.append(
                    f"regions[{r.name}]: {comp} port {p} differs from {ports[comp]} of another region; "
                    "the Kubernetes base runs one port per component in every region"
                )
        if r.pg_port != CNPG_PORT:
            wrong.append(f"regions[{r.name}].postgres: CloudNativePG services listen on {CNPG_PORT}, got {r.pg_port}")
        if r.patroni or r.etcd:
            wrong.append(f"regions[{r.name}].patroni/etcd: the Kubernetes deployment runs CloudNativePG: remove them")
    return ports, wrong


def check_k8s(cfg: XRegionConfig) -> dict[str, int]:
    """Hosts must be the Multi-Cluster Services names of the services that render them."""
    ports, wrong = _k8s_ports(cfg)
    for r in cfg.regions:
        ns = namespace(r)
        for key, host, svc in (
            ("s3.endpoint_url", host_port(r.s3.endpoint_url)[0], "s3"),
            ("postgres", r.pg_host, f"{cluster_name(r)}-rw"),
            ("mlflow_url", host_port(r.mlflow_url)[0], "mlflow"),
            ("serving_url", host_port(r.serving_url)[0], "model-server"),
        ):
            if host != f"{svc}.{ns}.{CLUSTERSET}":
                wrong.append(f"regions[{r.name}].{key}: host must be {svc}.{ns}.{CLUSTERSET}, got {host!r}")
    if cfg.witness:
        wrong.append("witness: the Kubernetes deployment runs CloudNativePG (no etcd): remove it")
    if not cfg.postgres.password_env:
        wrong.append("postgres.password_env: name the variable that holds the database password (e.g. PGPASSWORD)")
    front, stats = host_port(cfg.serving.frontend_url)[1], host_port(cfg.serving.haproxy_stats_url)[1]
    if PEER_PORT in (front, stats, ports.get("serving")):
        wrong.append(f"serving.frontend_url / haproxy_stats_url: port {PEER_PORT} is the front doors' peer port")
    refuse("Kubernetes", wrong)
    return ports


def secret_env(mapping: dict[str, str], secret: str = CREDENTIALS_SECRET) -> list[dict]:
    """{container variable: key of the Secret} as env entries."""
    return [
        {"name": inside, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for inside, key in mapping.items()
    ]


def plain_env(values: dict[str, str]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in values.items()]


def container(name: str, args: list[str], env: list[dict], cpu: str, memory: str, **extra) -> dict:
    """A container of the platform image (the overlays pin its tag) with the regions file mounted."""
    return {
        "name": name,
        "image": "mlflow-xregion",
        "args": args,
        "env": env,
        "envFrom": [{"configMapRef": {"name": "xregion-local"}}],
        "volumeMounts": [REGIONS_MOUNT, *extra.pop("mounts", [])],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "securityContext": CONTAINER_SECURITY,
        **extra,
    }


def http_probe(path: str, port: str, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pod_spec(containers: list[dict], volumes: list[dict], **extra) -> dict:
    return {"securityContext": POD_SECURITY, "containers": containers, "volumes": [REGIONS_VOLUME, *volumes], **extra}


def deployment(name: str, replicas: int, pod: dict, recreate: bool = False) -> dict:
    spec = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        "template": {"metadata": {"labels": {"app.kubernetes.io/name": name}}, "spec": pod},
    }
    if recreate:  # a ReadWriteOnce volume: the old pod lets go of it before the new one starts
        spec["strategy"] = {"type": "Recreate"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def job(name: str, pod: dict) -> dict:
    """A one-shot Job, removed a while after it finished so that the next apply runs it again."""
    pod = {**pod, "restartPolicy": "OnFailure"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 20, "ttlSecondsAfterFinished": 600, "template": {"spec": pod}},
    }


def service(name: str, ports: list[tuple[str, int]], selector: str | None = None, type_: str | None = None) -> dict:
    spec = {
        "selector": {"app.kubernetes.io/name": selector or name},
        "ports": [{"name": n, "port": p, "targetPort": n} for n, p in ports],
    }
    if type_:
        spec = {"type": type_, **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def pvc(name: str, size: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def pdb(name: str) -> dict:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}},
    }


def hpa(name: str, low: int, high: int) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }


def config_env() -> dict[str, str]:
    return {"XREGION_CONFIG": CONFIG_MOUNT}
