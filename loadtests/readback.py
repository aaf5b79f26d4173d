"""RPO by read-back: every acknowledged write of a drill read back through the regions' MLflow servers,
and every acknowledged artifact looked up in every region's bucket."""

from __future__ import annotations

import hashlib

from xregion.config import XRegionConfig
from xregion.mlflow_rest import MlflowRest

from . import metrics as M


def read_back(cfg: XRegionConfig, acks: list, timeout: float = 10.0) -> dict:
    """Every acknowledged metric value and artifact, read back through the regions' MLflow servers."""
    get = MlflowRest([r.mlflow_url for r in cfg.write_order()], timeout).get
    out: dict = {}
    metric_acks = [(a.run_id, a.key, a.step) for a in acks if a.kind == "metric"]
    if metric_acks:
        present, error = [], None
        for run_id, key in sorted({(r, k) for r, k, _ in metric_acks}):
            resp = get("/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)
            if resp is None:
                error = "no MLflow server answered the read-back"
                break
            if resp.status_code == 200:
                present += [(run_id, key, int(m["step"])) for m in resp.json().get("metrics", [])]
        out["metrics"] = {"error": error} if error else M.rpo(metric_acks, present)
    art_acks = [a for a in acks if a.kind == "artifact"]
    if art_acks:
        present, error = [], None
        for a in art_acks:
            resp = get(f"/api/2.0/mlflow-artifacts/artifacts/{a.key}")
            if resp is None:
                error = "no MLflow server answered the read-back"
                break
            if resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == a.sha256:
                present.append((a.run_id, a.key))
        out["artifacts"] = {"error": error} if error else M.rpo([(a.run_id, a.key) for a in art_acks], present)
        if not error:
            out["artifacts"]["in_every_region"] = _in_every_region(cfg, art_acks)
    for v in out.values():
        if "missing_keys" in v:
            v["missing_keys"] = [list(k) for k in v["missing_keys"]]
    return out


def _in_every_region(cfg: XRegionConfig, art_acks: list) -> dict:
    """How many acknowledged artifacts each region's bucket holds with the acknowledged hash."""
    from xregion.store import StoreError, stores

    counts = {}
    for name, store in stores(cfg).items():
        n = 0
        try:
            for a in art_acks:
                info = store.stat(f"{cfg.artifacts.prefix}/{a.key}")
                n += info is not None and info.sha256 == a.sha256
            counts[name] = n
        except StoreError as exc:
            counts[name] = f"unreachable: {exc}"
    return counts
