"""Helpers of the DR tests: a populated MLflow, artifacts copied to every region, counts read back."""
from __future__ import annotations

import time
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.store import RegionStore, stores


def populate(cfg: XRegionConfig, tmp: Path, tag: str = "dr") -> dict:
    """Experiments, runs with params/metrics/tags/artifacts, a registered model with versions, a stage
    and an alias, all through region a's MLflow server; every artifact object then in every region."""
    from mlflow import MlflowClient

    client = MlflowClient(cfg.primary.mlflow_url)
    exp = client.create_experiment(f"{tag}-{time.time_ns()}")
    runs = []
    for i in range(3):
        run = client.create_run(exp, tags={"purpose": tag})
        rid = run.info.run_id
        client.log_param(rid, "alpha", str(i / 10))
        for step in range(5):
            client.log_metric(rid, "loss", 1.0 / (step + 1 + i), step=step)
        f = tmp / f"notes-{i}.txt"
        f.write_text(f"run {i} of {tag}")
        client.log_artifact(rid, str(f))
        client.set_terminated(rid)
        runs.append(rid)
    name = f"{tag}-model-{time.time_ns()}"
    client.create_registered_model(name)
    versions = [client.create_model_version(name, f"runs:/{rid}/notes", run_id=rid) for rid in runs[:2]]
    client.transition_model_version_stage(name, versions[0].version, "Production")
    client.set_registered_model_alias(name, "champion", versions[1].version)
    replicate_all(cfg)
    return {"experiment": exp, "runs": runs, "model": name, "versions": [v.version for v in versions]}


def replicate_all(cfg: XRegionConfig) -> int:
    """Copy every artifact object of any region to the regions that lack it (the test's stand-in for
    the replicator, so these tests do not depend on the artifact plugin)."""
    prefix = cfg.artifacts.prefix + "/"
    st = stores(cfg)
    listing = {n: {o.key for o in s.list(prefix)} for n, s in st.items()}
    copied = 0
    for src_name, keys in listing.items():
        for key in keys:
            data = None
            for dst_name, dst in st.items():
                if key not in listing[dst_name]:
                    data = data if data is not None else st[src_name].get_bytes(key)
                    dst.put_bytes(key, data)
                    listing[dst_name].add(key)
                    copied += 1
    return copied


def region_store(cfg: XRegionConfig, name: str) -> RegionStore:
    return RegionStore(cfg.region(name))
