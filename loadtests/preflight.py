"""Before a drill: is the front door serving, and which users does the production model know?"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from xregion.config import XRegionConfig

from .scenarios import DrillError


def probe_serving(cfg: XRegionConfig, user_id: int = 1, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        resp = requests.post(
            f"{cfg.serving.frontend_url}/invocations",
            timeout=timeout,
            json={"dataframe_records": [{"user_id": user_id, "k": 5}]},
        )
    except requests.RequestException as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if resp.status_code != 200:
        return False, f"HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        preds = resp.json()["predictions"]
    except (ValueError, KeyError):
        return False, f"not a predictions payload: {resp.text[:200]}"
    return bool(preds), f"{len(preds)} predictions"


def wait_serving(cfg: XRegionConfig, timeout: float = 90.0, consecutive: int = 5) -> tuple[bool, str]:
    """Until the front door answers ``consecutive`` scoring requests in a row (or the timeout)."""
    deadline = time.monotonic() + timeout
    streak, detail = 0, "not tried"
    while time.monotonic() < deadline:
        ok, detail = probe_serving(cfg, 1 + streak)
        streak = streak + 1 if ok else 0
        if streak >= consecutive:
            return True, detail
        time.sleep(0.2 if ok else 0.5)
    return False, detail


def known_user_ids(cfg: XRegionConfig, run_dir: Path, progress: Callable[[str], None]) -> str:
    """A file of the production model's known user ids (from its towers artifact), for the Zipf draw."""
    import numpy as np

    from xregion.plugins import registry_client

    try:
        cl = registry_client.client(cfg, cfg.primary.mlflow_url)
        mv = registry_client.production_version(cl, cfg, cfg.registry.model_name)
        if mv is None:
            raise DrillError("no production version")
        with tempfile.TemporaryDirectory() as tmp:
            towers = registry_client.download_version_file(
                cl, cfg.registry.model_name, mv.version, "artifacts/towers.npz", tmp
            )
            ids = np.load(towers)["user_ids"]
        path = run_dir / "user_ids.txt"
        path.write_text("\n".join(str(int(i)) for i in ids) + "\n")
        progress(f"{len(ids)} known users of {cfg.registry.model_name} v{mv.version}")
        return str(path)
    except Exception as exc:  # the mix still works with a plain id range
        progress(f"cannot read the model's known users ({type(exc).__name__}: {exc}); drawing from 1-1000")
        return "1-1000"
