"""The Kubernetes deployment: YAML lint, `kustomize build` of every overlay, every rendered object
validated against the Kubernetes schemas (core kinds, offline, strict) or the minimal CRD schemas,
and the rendered objects checked against the regions file and the embedded platform."""

from __future__ import annotations

import copy

import pytest
import yaml

from xregion.config import parse_config
from xregion.infra.embedded import auth, patroni
from xregion.infra.serving.haproxy import SLOTS

from .helpers import K8S_DIR, K8S_REGIONS, k8s_config, kustomize_build, lint, validate_manifest

CFG = k8s_config()
REGIONS = [r.name for r in CFG.regions]
COLOURS = {"bk_blue": "model-server-blue", "bk_green": "model-server-green"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: kustomize_build(K8S_DIR / "overlays" / name) for name in REGIONS}


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def containers(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod(doc)["containers"]}


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c["env"]}


def test_yaml_lint():
    files = sorted(K8S_DIR.rglob("*.yaml"))
    assert len(files) >= 6 + 6 * len(REGIONS)
    assert [p for f in files for p in lint(f)] == []


def test_an_overlay_per_region_and_nothing_else():
    assert sorted(p.name for p in (K8S_DIR / "overlays").iterdir()) == sorted(REGIONS)


@pytest.mark.parametrize("region", REGIONS)
def test_every_object_is_schema_valid(rendered, region):
    docs = rendered[region]
    how = [validate_manifest(d) for d in docs]
    assert how.count("kubernetes") >= 25 and how.count("crd-schema") >= 3
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
    bad = copy.deepcopy(objects(docs, "HorizontalPodAutoscaler")["model-server-blue"])
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
def test_configmaps_carry_the_regions_file_the_region_and_the_auth_settings(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    maps = objects(docs, "ConfigMap")
    regions_map = next(m for n, m in maps.items() if n.startswith("xregion-regions-"))
    assert regions_map["data"]["regions.yaml"] == K8S_REGIONS.read_text()  # mounted, not copied
    assert parse_config(yaml.safe_load(regions_map["data"]["regions.yaml"])).model_dump() == CFG.model_dump()
    local = next(m for n, m in maps.items() if n.startswith("xregion-local-"))
    assert local["data"] == {
        "XREGION_LOCAL_REGION": region,
        "MLFLOW_TRACKING_URI": r.mlflow_url,
        "XREGION_READ_REPLICA_URI": CFG.database_read_uri(region, password=""),
    }
    ini = next(m for n, m in maps.items() if n.startswith("xregion-auth-"))["data"]["basic_auth.ini"]
    read = CFG.database_read_uri(region, password="", database="mlflow_auth")  # logins read the region's node first
    assert ini.endswith(auth.server_ini(CFG.database_uri(password="", database="mlflow_auth"), read))
    for doc in [*objects(docs, "Deployment").values(), *objects(docs, "Job").values()]:
        spec = pod(doc)
        used = {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
        used |= {e["configMapRef"]["name"] for c in spec["containers"] for e in c.get("envFrom", [])}
        assert used <= set(maps), f"{doc['metadata']['name']} uses missing ConfigMaps {used - set(maps)}"


@pytest.mark.parametrize("region", REGIONS)
def test_mlflow_servers_share_the_ledger_with_the_replicator(rendered, region):
    docs = rendered[region]
    dep = objects(docs, "Deployment")["mlflow"]
    c = containers(dep)["mlflow"]
    args = c["args"]
    assert args[:2] == ["mlflow", "server"]
    assert arg(args, "--backend-store-uri") == CFG.database_uri(password="")
    assert arg(args, "--read-replica-backend-store-uri") == "$(XREGION_READ_REPLICA_URI)"  # the region's own node
    assert arg(args, "--app-name") == "basic-auth"
    port = int(CFG.region(region).mlflow_url.rsplit(":", 1)[1])
    assert c["ports"] == [{"name": "http", "containerPort": port}]
    env = env_of(c)
    assert env["XREGION_LEDGER"]["value"] == "/ledger/outbox.sqlite"
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/xregion-auth/basic_auth.ini"
    assert {"name": "ledger", "mountPath": "/ledger"} in c["volumeMounts"]
    claim = {"name": "ledger", "persistentVolumeClaim": {"claimName": "ledger"}}
    assert claim in pod(dep)["volumes"]
    rep = objects(docs, "Deployment")["replicate"]
    assert rep["spec"]["replicas"] == 1 and rep["spec"]["strategy"] == {"type": "Recreate"}
    assert claim in pod(rep)["volumes"]
    assert containers(rep)["replicate"]["args"][:3] == ["xregion", "replicate", "run"]
    assert objects(docs, "PersistentVolumeClaim")["ledger"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # SQLite on a ReadWriteOnce volume: the MLflow pods run on the replicator's node
    term = pod(dep)["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == rep["spec"]["template"]["metadata"]["labels"] | {}
    assert objects(docs, "PodDisruptionBudget")["mlflow"]["spec"]["minAvailable"] >= 1


@pytest.mark.parametrize("region", REGIONS)
def test_model_servers_run_the_agent_of_their_colour(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    port = int(r.serving_url.rsplit(":", 1)[1])
    for slot, name in COLOURS.items():
        dep = objects(docs, "Deployment")[name]
        c = containers(dep)["model-server"]
        assert c["args"] == ["xregion", "router", "agent", "--region", region, "--slot", slot, "--port", str(port)]
        assert env_of(c)["XREGION_ROUTER_URL"]["value"] == "http://router:5310"
        assert c["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
        assert "livenessProbe" not in c and "startupProbe" not in c  # an idle colour serves nothing by design
        assert objects(docs, "Service")[name]["spec"]["ports"][0]["port"] == port
        hpa = objects(docs, "HorizontalPodAutoscaler")[name]
        assert (
            hpa["spec"]["scaleTargetRef"]["name"] == name
            and 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        )
    for doc in docs:  # nothing serves a floating alias
        assert "@" + CFG.registry.production_alias not in yaml.safe_dump(doc)
        if doc["kind"] == "Deployment":
            assert all("models" not in c.get("args", [])[:3] for c in pod(doc)["containers"])


@pytest.mark.parametrize("region", REGIONS)
def test_front_door_and_router_in_one_pod(rendered, region):
    docs = rendered[region]
    _, front = CFG.serving.frontend_url.rsplit(":", 1)
    dep = objects(docs, "Deployment")["frontdoor"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    cs = containers(dep)
    assert cs["router"]["args"] == [
        "xregion",
        "router",
        "run",
        "--external",
        "--regions",
        "$(XREGION_LOCAL_REGION)",  # each region's router drives its own region's colours
        "--api-host",
        "0.0.0.0",
        "--api-port",
        "5310",
    ]
    assert {"name": "router-state", "mountPath": "/var/lib/xregion"} in cs["router"]["volumeMounts"]
    assert objects(docs, "PersistentVolumeClaim")["router-state"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert cs["haproxy"]["command"][-1].endswith("exec haproxy -W -db -f /usr/local/etc/haproxy/haproxy.cfg")
    assert pod(dep)["securityContext"]["runAsUser"] == 10001  # both containers: the sockets are 0600
    services = objects(docs, "Service")
    assert services["frontdoor"]["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in services["frontdoor"]["spec"]["ports"]] == [int(front)]  # the one public port
    assert services["router"]["spec"]["selector"] == {"app.kubernetes.io/name": "frontdoor"}
    assert "frontdoor-peer" in objects(docs, "ServiceExport")


@pytest.mark.parametrize("region", REGIONS)
def test_distributed_locust_sends_serving_traffic_only(rendered, region):
    deps = objects(rendered[region], "Deployment")
    master, worker = containers(deps["locust-master"])["locust"], containers(deps["locust-worker"])["locust"]
    assert master["args"][:4] == ["locust", "-f", "/app/loadtests/locustfile.py", "--master"]
    assert arg(master["args"], "--host") == CFG.serving.frontend_url
    assert master["args"][-1] == worker["args"][-1] == "ServingUser"
    svc = objects(rendered[region], "Service")["locust-master"]
    assert arg(worker["args"], "--master-host") == svc["metadata"]["name"]
    assert int(arg(worker["args"], "--master-port")) in [p["port"] for p in svc["spec"]["ports"]]


@pytest.mark.parametrize("region", REGIONS)
def test_postgres_is_synchronous_with_the_embedded_parameters(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    spec = objects(docs, "Cluster")[f"pg-{region}"]["spec"]
    assert CFG.postgres.replication == "sync" and spec["minSyncReplicas"] == spec["maxSyncReplicas"] == 1
    params = spec["postgresql"]["parameters"]
    shared = {k: str(v) for k, v in patroni.postgres_parameters(CFG).items()}
    assert params.items() <= shared.items() and params["synchronous_commit"] == "remote_apply"
    assert set(shared) - set(params) == {"wal_level", "hot_standby", "wal_log_hints"}  # CloudNativePG's own
    if r.role == "primary":
        initdb = spec["bootstrap"]["initdb"]
        assert (initdb["database"], initdb["owner"], initdb["secret"]) == (
            "mlflow",
            "mlflow",
            {"name": "xregion-pg-app"},
        )
        assert 'CREATE DATABASE "mlflow_auth" OWNER "mlflow"' in initdb["postInitSQL"]
        assert "replica" not in spec
    else:  # a CloudNativePG replica cluster streaming from the primary region
        source = f"pg-{CFG.primary.name}"
        assert spec["replica"] == {"enabled": True, "source": source}
        assert spec["bootstrap"] == {"pg_basebackup": {"source": source}}
        ext = {e["name"]: e for e in spec["externalClusters"]}[source]
        assert ext["connectionParameters"]["host"] == CFG.primary.pg_host


@pytest.mark.parametrize("region", REGIONS)
def test_minio_and_cross_region_names(rendered, region):
    docs = rendered[region]
    r = CFG.region(region)
    tenant = objects(docs, "Tenant")["minio"]
    assert tenant["spec"]["configuration"] == {"name": "minio-config"}
    assert "buckets" not in tenant["spec"]  # the init Job creates it, with object lock
    s3 = objects(docs, "Service")["s3"]
    assert s3["spec"]["ports"][0]["port"] == int(r.s3.endpoint_url.rsplit(":", 1)[1])
    init = env_of(containers(objects(docs, "Job")["minio-init"])["minio-init"])
    assert (
        init["BUCKET"]["value"] == r.s3.bucket
        and init["MINIO_URL"]["value"] == f"http://s3:{s3['spec']['ports'][0]['port']}"
    )
    exported = set(objects(docs, "ServiceExport"))
    assert exported == {"s3", f"pg-{region}-rw", "mlflow", "frontdoor-peer", *COLOURS.values()}
    services = set(objects(docs, "Service")) | {f"pg-{region}-rw"}  # made by CloudNativePG
    assert exported <= services
    for host in (r.s3.endpoint_url.split("//")[1].split(":")[0], r.pg_host, r.mlflow_url.split("//")[1].split(":")[0]):
        svc, ns, rest = host.split(".", 2)
        assert ns == f"xregion-{region}" and rest == "svc.clusterset.local" and svc in exported
    assert all(s in SLOTS for s in COLOURS)
