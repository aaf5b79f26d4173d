"""MinIO: the scoped users' policies grant exactly what they should, the bucket keeps versions, and
the init script is idempotent (run here against a fake ``mc``: no MinIO server runs here)."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from pathlib import Path

import pytest

from xregion.infra.deploy import minio

from .helpers import COMPOSE_DIR, K8S_DIR, compose_config, compose_file, kustomize_build

CFG = compose_config()
# what the xregion store does, as S3 actions (xregion/store.py): list/head bucket, get/head object,
# put (single and multipart), delete (one and many), abort an upload
STORE_READS = {("s3:ListBucket", ""), ("s3:GetObject", "k")}
STORE_WRITES = {("s3:PutObject", "k"), ("s3:DeleteObject", "k"), ("s3:AbortMultipartUpload", "k")}
NEVER = [  # destroying a version, lifting retention or reconfiguring the bucket: root only
    ("s3:DeleteObjectVersion", "k"),
    ("s3:BypassGovernanceRetention", "k"),
    ("s3:PutObjectRetention", "k"),
    ("s3:PutObjectLegalHold", "k"),
    ("s3:PutBucketVersioning", ""),
    ("s3:PutBucketObjectLockConfiguration", ""),
    ("s3:PutLifecycleConfiguration", ""),
    ("s3:PutBucketPolicy", ""),
    ("s3:DeleteBucket", ""),
    ("s3:CreateBucket", ""),
    ("admin:CreateUser", ""),
]


def allowed(policy: dict, action: str, resource: str) -> bool:
    """IAM evaluation as MinIO does it for allow-only policies: some statement matches both."""
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if st["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action, a) for a in actions):
            if any(fnmatch.fnmatchcase(resource, r) for r in resources):
                return True
    return False


def arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key else "")


def policy_file(region: str, name: str) -> dict:
    return json.loads((COMPOSE_DIR / "minio" / region / f"{name}.json").read_text())


@pytest.mark.parametrize("region", [r.name for r in CFG.regions])
def test_the_policies_grant_exactly_what_each_user_needs(region):
    bucket = CFG.region(region).s3.bucket
    other = next(r.s3.bucket for r in CFG.regions if r.name != region)
    platform, reader = policy_file(region, "xregion-platform"), policy_file(region, "xregion-reader")
    for p in (platform, reader):
        assert p["Version"] == "2012-10-17" and all(s["Effect"] == "Allow" for s in p["Statement"])
        actions = [a for s in p["Statement"] for a in s["Action"]]
        assert not any("*" in a for a in actions), "no wildcard action"
    for action, key in STORE_READS | STORE_WRITES:
        assert allowed(platform, action, arn(bucket, key)), action
        assert not allowed(platform, action, arn(other, key)), f"{action} on another region's bucket"
    for action, key in STORE_READS:
        assert allowed(reader, action, arn(bucket, key)), action
    for action, key in STORE_WRITES:
        assert not allowed(reader, action, arn(bucket, key)), f"the reader may {action}"
    for action, key in NEVER:
        assert not allowed(platform, action, arn(bucket, key)) and not allowed(reader, action, arn(bucket, key)), action


def test_versions_outlive_the_retention_before_they_expire():
    rule = json.loads((COMPOSE_DIR / "minio" / "a" / "lifecycle.json").read_text())["Rules"][0]
    assert rule["Status"] == "Enabled" and rule["Filter"] == {"Prefix": ""}
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] > minio.RETENTION_DAYS
    script = minio.INIT_SCRIPT
    assert 'mc mb --ignore-existing --with-lock "region/$BUCKET"' in script  # versioning comes with the lock
    assert f'mc retention set --default GOVERNANCE "{minio.RETENTION_DAYS}d"' in script


FAKE_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
case "$*" in
  *"admin policy attach"*) echo "mc: <ERROR> Unable to make user/group policy association. $MC_ATTACH_ERROR" >&2; exit 1 ;;
esac
exit 0
"""


def _run_init(tmp_path: Path, attach_error: str) -> subprocess.CompletedProcess:
    files = minio.init_files(CFG.region("a"))
    for name, text in files.items():
        (tmp_path / name).write_text(text.replace(minio.INIT_DIR, str(tmp_path)))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mc").write_text(FAKE_MC)
    (tmp_path / "bin" / "mc").chmod(0o755)
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "MC_LOG": str(tmp_path / "mc.log"),
        "MC_ATTACH_ERROR": attach_error,
        "MINIO_URL": "http://minio-a:9000",
        "BUCKET": "xregion-a",
        **{k: f"value-of-{k}" for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")},
        **{
            k: f"value-of-{k}"
            for k in ("PLATFORM_ACCESS_KEY", "PLATFORM_SECRET_KEY", "READER_ACCESS_KEY", "READER_SECRET_KEY")
        },
    }
    return subprocess.run(["sh", str(tmp_path / "init.sh")], env=env, capture_output=True, text=True, timeout=30)


def test_the_init_script_runs_again_where_its_policies_are_attached(tmp_path):
    proc = _run_init(tmp_path, "The specified policy change is already in effect.")
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert calls[0].startswith("alias set region http://minio-a:9000")
    assert "admin policy attach region xregion-platform --user value-of-PLATFORM_ACCESS_KEY" in calls
    assert "admin policy attach region xregion-reader --user value-of-READER_ACCESS_KEY" in calls
    assert "admin user add region value-of-READER_ACCESS_KEY value-of-READER_SECRET_KEY" in calls


def test_the_init_script_fails_on_any_other_refusal(tmp_path):
    proc = _run_init(tmp_path, "Access Denied.")
    assert proc.returncode != 0 and "Access Denied" in proc.stderr


def test_init_scripts_parse_and_are_mounted_where_they_run():
    for script in [*COMPOSE_DIR.glob("minio/*/init.sh"), *K8S_DIR.glob("overlays/*/minio/init.sh")]:
        for shell in ("sh", "bash"):
            proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{script}: {proc.stderr}"
        assert script.read_text() == minio.INIT_SCRIPT
    services = compose_file()["services"]
    for r in CFG.regions:
        init = services[f"minio-init-{r.name}"]
        assert init["entrypoint"] == ["sh", f"{minio.INIT_DIR}/init.sh"]
        assert f"./minio/{r.name}:{minio.INIT_DIR}:ro" in init["volumes"]
        assert init["environment"]["BUCKET"] == r.s3.bucket and init["environment"]["MINIO_URL"] == r.s3.endpoint_url
        for svc in (f"mlflow-{x.name}" for x in CFG.regions):  # no bucket is used before it exists
            assert services[svc]["depends_on"][f"minio-init-{r.name}"] == {
                "condition": "service_completed_successfully"
            }
    job = next(
        d
        for d in kustomize_build(K8S_DIR / "overlays" / "a")
        if d["kind"] == "Job" and d["metadata"]["name"] == "minio-init"
    )
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][-1].startswith(". /minio-config/config.env && exec sh ")
    assert not any(e["name"].startswith("MINIO_ROOT") for e in c["env"])


def test_the_fake_mc_is_really_used(tmp_path):
    """Guard: the script's own PATH lookups find the fake, not a real mc."""
    assert _run_init(tmp_path, "already in effect").returncode == 0
    assert os.path.getsize(tmp_path / "mc.log") > 0
