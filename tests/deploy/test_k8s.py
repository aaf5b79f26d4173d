"""The Kubernetes deployment: YAML lint, `kustomize build` of every overlay, every rendered object
validated against the Kubernetes schemas (core kinds, offline, strict) or the minimal CRD schemas,
and the rendered objects checked against the regions file."""

from __future__ import annotations

import copy

import pytest
import yaml

from xregion.config import parse_config
from xregion.infra.deploy import generate as deploy

from .helpers import K8S_DIR, K8S_REGIONS, k8s_config, kustomize_build, lint, validate_manifest

CFG = k8s_config()
REGIONS = [r.name for r in CFG.regions]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: kustomize_build(K8S_DIR / "overlays" / name) for name in REGIONS}


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(deployment: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_yaml_lint():
    files = sorted(K8S_DIR.rglob("*.yaml"))
    assert len(files) >= 5 + 5 * len(REGIONS) + 1
    assert [p for f in files for p in lint(f)] == []


def test_an_overlay_per_region_and_nothing_else():
    assert sorted(p.name for p in (K8S_DIR / "overlays").iterdir()) == sorted(REGIONS)


@pytest.mark.parametrize("region", REGIONS)
def test_every_object_is_schema_valid(rendered, region):
    docs = rendered[region]
    how = [validate_manifest(d) for d in docs]
    assert how.count("kubernetes") >= 15 and how.count("crd-schema") >= 3
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == f"xregion-{region}"
        assert d["metadata"]["labels"]["xregion.io/region"] == region


def test_the_validators_refuse_a_broken_object(rendered):
    """Guard against a validator that passes everything (offline, strict, CRDs included)."""
    docs = rendered[REGIONS[0]]
    bad = copy.deepcopy(objects(docs, "Deployment")["mlflow"])
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5000"
    with pytest.raises(AssertionError, match="containerPort|5000"):
        validate_manifest(bad)
    bad = copy.deepcopy(objects(docs, "HorizontalPodAutoscaler")["model-server"])
    bad["spec"]["maxReplica"] = 3
    with pytest.raises(AssertionError, match="maxReplica"):
        validate_manifest(bad)
    bad = copy.deepcopy(objects(docs, "Cluster")[f"pg-{REGIONS[0]}"])
    bad["spec"]["instance"] = 2
    with pytest.raises(Exception, match="instance"):
        validate_manifest(bad)
    with pytest.raises(AssertionError, match="no schema"):
        validate_manifest({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


@pytest.mark.parametrize("region", REGIONS)
def test_configmaps_carry_the_regions_file_and_the_region(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    maps = objects(docs, "ConfigMap")
    regions_map = next(m for n, m in maps.items() if n.startswith("xregion-regions-"))
    assert regions_map["data"]["regions.yaml"] == K8S_REGIONS.read_text()  # mounted, not copied
    assert parse_config(yaml.safe_load(regions_map["data"]["regions.yaml"])).model_dump() == CFG.model_dump()
    local = next(m for n, m in maps.items() if n.startswith("xregion-local-"))
    assert local["data"] == {"XREGION_LOCAL_REGION": region, "MLFLOW_TRACKING_URI": r.mlflow_url}
    # every ConfigMap a pod uses exists in the build (kustomize rewrote the hashed names)
    for dep in objects(docs, "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        used = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        used |= {e["configMapRef"]["name"] for c in pod["containers"] for e in c.get("envFrom", [])}
        assert used <= set(maps), f"{dep['metadata']['name']} uses missing ConfigMaps {used - set(maps)}"


@pytest.mark.parametrize("region", REGIONS)
def test_mlflow_servers(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    host, port = deploy.host_port(r.mlflow_url)
    dep = objects(docs, "Deployment")["mlflow"]
    assert dep["spec"]["replicas"] >= 2
    c = containers(dep)["mlflow"]
    assert c["args"][:15] == [
        "mlflow",
        "server",
        "--backend-store-uri",
        CFG.database_uri(password=""),
        "--registry-store-uri",
        "xregion+" + CFG.database_uri(password=""),  # the promotion gate
        "--artifacts-destination",
        f"xregion:///{CFG.artifacts.prefix}",
        "--serve-artifacts",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    assert f"{host}:{port}" in arg(c["args"], "--allowed-hosts").split(",")
    assert c["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    _platform_container(c, dep)
    svc = objects(docs, "Service")["mlflow"]
    assert svc["spec"]["ports"][0]["port"] == port
    pdb = objects(docs, "PodDisruptionBudget")["mlflow"]
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def _platform_container(c: dict, dep: dict) -> None:
    env = {e["name"]: e for e in c["env"]}
    assert env["XREGION_CONFIG"]["value"] == deploy.CONFIG_MOUNT
    for var in deploy.credential_vars(CFG):
        assert "secretKeyRef" in env[var]["valueFrom"], f"{var} must come from a Secret"
    assert {"name": "regions", "mountPath": "/etc/xregion", "readOnly": True} in c["volumeMounts"]
    assert c["image"] == deploy.IMAGE


@pytest.mark.parametrize("region", REGIONS)
def test_model_servers_scale_with_an_hpa(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    _, port = deploy.host_port(r.serving_url)
    dep = objects(docs, "Deployment")["model-server"]
    c = containers(dep)["model-server"]
    assert c["args"] == [
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{CFG.registry.model_name}@{CFG.registry.production_alias}",
        "--env-manager",
        "local",
        "-h",
        "0.0.0.0",
        "-p",
        str(port),
    ]
    assert c["ports"][0]["containerPort"] == port and c["resources"]["requests"]["cpu"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ping"
    _platform_container(c, dep)
    assert objects(docs, "Service")["model-server"]["spec"]["ports"][0]["port"] == port
    hpa = objects(docs, "HorizontalPodAutoscaler")["model-server"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-server"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("region", REGIONS)
def test_front_door_and_control_plane(rendered, region):
    docs = rendered[region]
    _, front = deploy.host_port(CFG.serving.frontend_url)
    _, stats = deploy.host_port(CFG.serving.haproxy_stats_url)
    dep = objects(docs, "Deployment")["frontdoor"]
    cs = containers(dep)
    assert [p["containerPort"] for p in cs["haproxy"]["ports"]] == [front, stats]
    assert cs["control-plane"]["args"] == ["xregion", "router", "run"]
    _platform_container(cs["control-plane"], dep)
    svc = objects(docs, "Service")["frontdoor"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [front, stats]
    cfg_map = next(m for n, m in objects(docs, "ConfigMap").items() if n.startswith("frontdoor-config-"))
    haproxy = cfg_map["data"]["haproxy.cfg"]
    assert f"bind :{front}\n" in haproxy and f"bind :{stats}\n" in haproxy
    runtime = {e["name"]: e.get("value") for e in cs["control-plane"]["env"]}["XREGION_HAPROXY_RUNTIME_API"]
    assert f"stats socket ipv4@{runtime} level admin" in haproxy
    servers = [line.split() for line in haproxy.splitlines() if line.strip().startswith("server ")]
    # the local region's model servers first, every other region's as backups, at their regions-file address
    assert [s[1] for s in servers] == [region] + [r.name for r in CFG.write_order() if r.name != region]
    for s in servers:
        r = CFG.region(s[1])
        assert s[2] == "{}:{}".format(*deploy.host_port(r.serving_url))
        assert (s[-1] == "backup") == (r.name != region)


@pytest.mark.parametrize("region", REGIONS)
def test_distributed_locust(rendered, region):
    deps = objects(rendered[region], "Deployment")
    master, worker = containers(deps["locust-master"])["locust"], containers(deps["locust-worker"])["locust"]
    assert master["args"][:4] == ["locust", "-f", deploy.LOCUSTFILE, "--master"]
    assert arg(master["args"], "--host") == CFG.serving.frontend_url
    assert worker["args"][:4] == ["locust", "-f", deploy.LOCUSTFILE, "--worker"]
    svc = objects(rendered[region], "Service")["locust-master"]
    assert arg(worker["args"], "--master-host") == svc["metadata"]["name"]
    assert int(arg(worker["args"], "--master-port")) in [p["port"] for p in svc["spec"]["ports"]]
    assert deps["locust-worker"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("region", REGIONS)
def test_postgres_minio_and_cross_region_names(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    cluster = objects(docs, "Cluster")[f"pg-{region}"]
    assert r.pg_host == f"pg-{region}-rw.xregion-{region}.{deploy.CLUSTERSET}" and r.pg_port == 5432
    if r.role == "primary":
        assert cluster["spec"]["bootstrap"]["initdb"] == {
            "database": CFG.postgres.database,
            "owner": CFG.postgres.user,
            "secret": {"name": "xregion-pg-app"},
        }
        assert "replica" not in cluster["spec"]
    else:  # a CloudNativePG replica cluster streaming from the primary region
        source = f"pg-{CFG.primary.name}"
        assert cluster["spec"]["replica"] == {"enabled": True, "source": source}
        assert cluster["spec"]["bootstrap"] == {"pg_basebackup": {"source": source}}
        ext = {e["name"]: e for e in cluster["spec"]["externalClusters"]}[source]
        assert ext["connectionParameters"]["host"] == CFG.primary.pg_host
        assert ext["connectionParameters"]["port"] == str(CFG.primary.pg_port)
    tenant = objects(docs, "Tenant")["minio"]
    assert tenant["spec"]["buckets"] == [{"name": r.s3.bucket}]
    s3 = objects(docs, "Service")["s3"]
    assert s3["spec"]["ports"][0]["port"] == deploy.host_port(r.s3.endpoint_url)[1]
    assert s3["spec"]["selector"] == {"v1.min.io/tenant": tenant["metadata"]["name"]}
    # every address of this region in the regions file is an exported service of this overlay
    exported = set(objects(docs, "ServiceExport"))
    services = set(objects(docs, "Service")) | {f"{cluster['metadata']['name']}-rw"}  # made by CloudNativePG
    for url_host in (
        deploy.host_port(r.s3.endpoint_url)[0],
        r.pg_host,
        deploy.host_port(r.mlflow_url)[0],
        deploy.host_port(r.serving_url)[0],
    ):
        svc, ns, rest = url_host.split(".", 2)
        assert ns == f"xregion-{region}" and rest == deploy.CLUSTERSET
        assert svc in exported and svc in services
