"""Real deployments generated from a regions file: docker-compose (``infra/compose/``) and
Kubernetes/Kustomize (``infra/k8s/``), and the one-shot jobs they run.

The regions file (the embedded platform's schema, read with ``xregion.config``) is the one source
of every host, port, bucket, credential variable and database setting; the modules beside this
one render the compose file, the Patroni and HAProxy configurations, the MinIO policies and every
Kubernetes manifest from it, with the embedded platform's own code wherever the two share a
setting, and the tests check that the committed files equal what they render::

    python -m xregion.infra.deploy compose --config infra/compose/regions.yaml --out infra/compose
    python -m xregion.infra.deploy k8s --config infra/k8s/base/regions.yaml --out infra/k8s
    python -m xregion.infra.deploy k8s ... --check      # exit 1 and name the files that differ
    python -m xregion.infra.deploy database|accounts|buckets   # in a container: the one-shot jobs

Modules: ``common`` (images, mounts, YAML), ``credentials`` (which component gets which secret),
``commands`` (what each container runs), ``frontdoor`` (HAProxy through the one renderer),
``minio`` (buckets, policies), ``compose`` and ``compose_database``, ``k8s_common``, ``k8s_base``
and ``k8s_overlay``, ``jobs`` (the one-shots). Secrets are never rendered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xregion.config import ConfigError, XRegionConfig, load_config

from . import jobs
from .common import DeployError
from .compose import render_compose
from .k8s_base import render_k8s_base
from .k8s_common import check_k8s
from .k8s_overlay import render_k8s_overlay

KINDS = ("compose", "k8s")
JOBS = ("database", "accounts", "buckets")


def render_k8s(cfg: XRegionConfig) -> dict[str, str]:
    ports = check_k8s(cfg)
    out = render_k8s_base(cfg, ports)
    for r in cfg.regions:
        out |= render_k8s_overlay(cfg, r, ports)
    return out


def render(kind: str, cfg: XRegionConfig) -> dict[str, str]:
    if kind == "compose":
        return render_compose(cfg)
    if kind == "k8s":
        return render_k8s(cfg)
    raise DeployError(f"unknown deployment kind {kind!r}: compose or k8s")


def write(files: dict[str, str], out: Path) -> list[Path]:
    written = []
    for rel, text in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file() or p.read_text() != text:
            p.write_text(text)
            written.append(p)
    return written


def differences(files: dict[str, str], out: Path) -> list[str]:
    return [rel for rel, text in files.items() if not (out / rel).is_file() or (out / rel).read_text() != text]


def run_job(job: str, url: str | None) -> int:
    """A one-shot job in a container: its regions file is XREGION_CONFIG, its passwords in its env."""
    cfg = load_config()
    if job == "database":
        done = jobs.bootstrap_database(cfg)
        print(f"database roles and databases ready{': created ' + ', '.join(done) if done else ''}")
    elif job == "accounts":
        done = jobs.create_accounts(cfg, url)
        print(f"MLflow accounts ready{': created ' + ', '.join(done) if done else ''}")
    else:
        for name in jobs.ensure_buckets(cfg):
            print(f"bucket of region {name}: ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xregion.infra.deploy", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=[*KINDS, *JOBS])
    ap.add_argument("--config", type=Path, help="regions file (default: the deployment's own)")
    ap.add_argument("--out", type=Path, help="output directory (default: the regions file's deployment folder)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    ap.add_argument("--url", help="accounts: the MLflow server to create them through (default: the primary's)")
    args = ap.parse_args(argv)
    if args.kind in JOBS:
        try:
            return run_job(args.kind, args.url)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    here = Path(__file__).resolve().parent.parent  # infra/: compose/ and k8s/ live beside deploy/
    default_cfg = here / ("compose/regions.yaml" if args.kind == "compose" else "k8s/base/regions.yaml")
    cfg_path = args.config or default_cfg
    out = args.out or (here / args.kind)
    try:
        files = render(args.kind, load_config(cfg_path))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        diff = differences(files, out)
        for rel in diff:
            print(f"differs from what {cfg_path} renders: {out / rel}", file=sys.stderr)
        return 1 if diff else 0
    for p in write(files, out):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
