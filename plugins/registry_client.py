"""The client side of the gated registry: promote and roll back through a region's MLflow server.

Both talk to a region's MLflow server over REST (``MLFLOW_TRACKING_URI``, else the first region
whose server answers, primary first), so they pass through the server's registry plugin
(``plugins/registry_store.py``): the replication gate and the recorded transitions happen there,
whichever client moves the version. The reason and the declared user travel as the version tags
``xregion.reason`` / ``xregion.actor``, which the plugin consumes into its transition record.
"""

from __future__ import annotations

import getpass
import json
import os
import urllib.request
import warnings

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from xregion import events
from xregion.config import XRegionConfig
from xregion.errors import XRegionError

from .registry_store import ACTOR_TAG, ARCHIVED, HISTORY_TAG, REASON_TAG

# stages are deprecated in MLflow but are what the release process uses
warnings.filterwarnings("ignore", message=r".*transition_model_version_stage.*", category=FutureWarning)


class RegistryError(XRegionError, RuntimeError):
    pass


def server_url(cfg: XRegionConfig, tracking_uri: str | None = None) -> str:
    """The MLflow server to talk to: the given one, MLFLOW_TRACKING_URI, else the first healthy region."""
    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    for r in cfg.write_order():
        try:
            with urllib.request.urlopen(f"{r.mlflow_url}/health", timeout=3) as resp:
                if resp.status == 200:
                    return r.mlflow_url
        except OSError:
            continue
    raise RegistryError("no region's MLflow server answers: " + ", ".join(r.mlflow_url for r in cfg.regions))


def client(cfg: XRegionConfig, tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    url = server_url(cfg, tracking_uri)
    return MlflowClient(tracking_uri=url, registry_uri=url)


class RegionOrder:
    """The order to try the regions' MLflow servers in: the one that answered last first, a failing
    one last, so that a frozen region costs one timeout, not one per call."""

    def __init__(self, cfg: XRegionConfig):
        self.names = [r.name for r in cfg.write_order()]

    def answered(self, name: str) -> None:
        self.names.remove(name)
        self.names.insert(0, name)

    def failed(self, name: str) -> None:
        self.names.remove(name)
        self.names.append(name)


def on_any_region(cfg: XRegionConfig, call, order: RegionOrder | None = None):
    """``call(client)`` against each region's MLflow server in turn (primary first, or ``order``)
    until one answers.

    A region whose server is down, frozen or failing (connection error, 5xx) is skipped; an answer
    such as "not found" is an answer and is raised. Bound each attempt with the environment
    variables MLFLOW_HTTP_REQUEST_TIMEOUT and MLFLOW_HTTP_REQUEST_MAX_RETRIES (the router sets 10 s
    and 0), so a dead region costs seconds, not MLflow's minutes of back-off."""
    failures = []
    for name in list(order.names) if order else [r.name for r in cfg.write_order()]:
        try:
            answer = call(client(cfg, cfg.region(name).mlflow_url))
        except MlflowException as err:
            if err.get_http_status_code() < 500:
                raise
            failures.append(f"{name}: {err.message[:200]}")
        except OSError as err:
            failures.append(f"{name}: {err}")
        else:
            if order:
                order.answered(name)
            return answer
        if order:
            order.failed(name)
    raise RegistryError("no region's MLflow server answered: " + "; ".join(failures))


def download_version_file(cl, model: str, version: str, path: str, dst: str) -> str:
    """Download one file of a model version's artifacts, resolved in the registry ``cl`` talks to
    (never a process-wide default registry). Returns the local path."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    location = cl.get_model_version_download_uri(model, str(version))
    if location.startswith("models:/m-"):  # an MLflow 3 logged model: its own artifact location
        location = cl.get_logged_model(location.removeprefix("models:/").split("/")[0]).artifact_location
    repo = get_artifact_repository(location, tracking_uri=cl.tracking_uri, registry_uri=cl._registry_uri)
    return repo.download_artifacts(path, dst_path=dst)


def whoami() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def production_version(cl, cfg: XRegionConfig, model: str) -> ModelVersion | None:
    """The version serving should follow: the production alias's, else the newest in the production stage."""
    rm = cl.get_registered_model(model)
    alias_version = (rm.aliases or {}).get(cfg.registry.production_alias)
    if alias_version:
        return cl.get_model_version(model, str(alias_version))
    latest = cl.get_latest_versions(model, stages=[cfg.registry.production_stage])
    return max(latest, key=lambda mv: int(mv.version)) if latest else None


def _annotate(cl, model: str, version: str, reason: str, who: str) -> None:
    if reason:
        cl.set_model_version_tag(model, version, REASON_TAG, reason)
    cl.set_model_version_tag(model, version, ACTOR_TAG, who)


def _clear(cl, model: str, version: str) -> None:
    mv = cl.get_model_version(model, version)
    for key in (REASON_TAG, ACTOR_TAG):
        if key in mv.tags:
            cl.delete_model_version_tag(model, version, key)


def promote(
    cl,
    cfg: XRegionConfig,
    model: str,
    version: str,
    stage: str | None = None,
    alias: str | None = None,
    reason: str = "",
    who: str | None = None,
) -> dict:
    """Move ``version`` to ``stage`` and/or point ``alias`` at it (both production ones when neither
    is given). Raises MlflowException (the gate's refusal) and leaves nothing half-annotated."""
    version = str(version)
    if stage is None and alias is None:
        stage, alias = cfg.registry.production_stage, cfg.registry.production_alias
    who = who or whoami()
    done: dict = {"model": model, "version": version}
    try:
        if stage:
            _annotate(cl, model, version, reason, who)
            archive = stage.lower() in ("production", "staging")
            mv = cl.transition_model_version_stage(model, version, stage, archive_existing_versions=archive)
            done["stage"] = mv.current_stage
        if alias:
            _annotate(cl, model, version, reason, who)
            cl.set_registered_model_alias(model, alias, version)
            done["alias"] = alias
    except MlflowException:
        _clear(cl, model, version)
        raise
    return done


def rollback(
    cl,
    cfg: XRegionConfig,
    model: str,
    reason: str = "",
    to_version: str | None = None,
    who: str | None = None,
    record: bool = True,
    source: str = "cli",
) -> dict:
    """The previous production version back in production (stage and alias), the current one archived."""
    current = production_version(cl, cfg, model)
    if to_version is None:
        rm = cl.get_registered_model(model)
        try:
            history = [str(v) for v in json.loads(rm.tags.get(HISTORY_TAG, "[]"))]
        except json.JSONDecodeError:
            history = []
        for v in reversed(history):
            if current is not None and v == str(current.version):
                continue
            try:
                cl.get_model_version(model, v)
            except MlflowException:
                continue  # deleted since
            to_version = v
            break
    if to_version is None:
        raise RegistryError(
            f"{model}: no previous production version to roll back to (history: {HISTORY_TAG} on the registered model)"
        )
    full_reason = f"rollback from version {current.version if current else '-'}" + (f": {reason}" if reason else "")
    done = promote(
        cl,
        cfg,
        model,
        to_version,
        stage=cfg.registry.production_stage,
        alias=cfg.registry.production_alias,
        reason=full_reason,
        who=who,
    )
    if current is not None and str(current.version) != str(to_version):
        cur = cl.get_model_version(model, str(current.version))
        if cur.current_stage != ARCHIVED:
            _annotate(cl, model, str(current.version), full_reason, who or whoami())
            cl.transition_model_version_stage(model, str(current.version), ARCHIVED, archive_existing_versions=False)
    done.update(
        {
            "from_version": str(current.version) if current else None,
            "to_version": str(to_version),
            "reason": full_reason,
        }
    )
    if record:
        events.record(
            "registry.rollback",
            model=model,
            from_version=done["from_version"],
            to_version=done["to_version"],
            reason=full_reason,
            who=who or whoami(),
            source=source,
        )
    return done
