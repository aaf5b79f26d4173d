"""The gated model registry: MLflow's own SQL registry store, with promotion gated on replication.

Registered as an ``mlflow.model_registry_store`` plugin for the URI schemes
``xregion+postgresql``, ``xregion+postgresql+psycopg2`` and ``xregion+sqlite``: the store URI is
MLflow's database URI with ``xregion+`` in front. ``mlflow server --registry-store-uri
xregion+postgresql+psycopg2://...`` runs it inside the server, so the MLflow UI, the REST API and
every client are gated, not only the Python client.

* Moving a version to the production stage (``registry.production_stage``, default Production)
  or pointing the production alias (``registry.production_alias``, default champion) at it
  succeeds only when every artifact of the version exists in every region with the same size
  and recorded sha256 (``plugins/verify.py``). Otherwise ``MlflowException`` (HTTP 409,
  RESOURCE_CONFLICT) names the regions, the objects and the repair command
  ``xregion replicate resync --prefix <prefix>``.
* Every stage transition and every alias change is recorded on the model version as a tag
  ``xregion.transition.<epoch ms>`` = JSON {who, when, from, to, reason, via}, which the MLflow UI
  shows on the version page, and in the xregion event log (``promotion``). A promotion to
  production also appends the version to the registered model's tag
  ``xregion.production_history`` (what ``xregion rollback`` goes back along).
* Who: the authenticated user of the HTTP request when MLflow's auth is on, else the user the
  client declared in the tag ``xregion.actor`` (``xregion promote`` sets it from
  ``MLFLOW_TRACKING_USERNAME`` or the OS user), else the server's OS user. Why: the tag
  ``xregion.reason``, set by the client before the call; both are consumed (deleted) by it.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_CONFLICT
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from xregion import events
from xregion.config import XRegionConfig, load_config
from xregion.uris import NotReplicatedURI, key_prefix

PREFIX = "xregion+"
TRANSITION_TAG = "xregion.transition."
REASON_TAG = "xregion.reason"
ACTOR_TAG = "xregion.actor"
HISTORY_TAG = "xregion.production_history"
HISTORY_LEN = 20
ARCHIVED = "Archived"


class ReplicationGateError(MlflowException):
    """A promotion refused because the version's artifacts are not in every region."""

    def __init__(self, message: str, missing: list[dict], prefix: str):
        super().__init__(message, error_code=RESOURCE_CONFLICT)
        self.missing = missing
        self.prefix = prefix


def check_replicated(cfg: XRegionConfig, artifact_uri: str) -> tuple[str, int, list[dict]]:
    """(key prefix, objects verified, problems) for every object under an artifact location.

    A problem is {key, region, problem, detail}: missing | stale | hash | size | corrupt |
    deleted | unreachable (plugins/verify.py), or ``empty`` when no region holds any object
    under the prefix and the ledger knows none."""
    from xregion.home import ledger_path
    from xregion.store import stores

    from .outbox import Outbox
    from .verify import check

    prefix = key_prefix(artifact_uri, cfg)
    report = check(stores(cfg), prefix.rstrip("/") + "/", Outbox(ledger_path(cfg)))
    problems = [
        {"key": d.key, "region": d.region, "problem": d.problem, "detail": d.detail} for d in report.differences
    ]
    if report.objects == 0 and not problems:
        problems = [
            {"key": prefix + "/", "region": r.name, "problem": "empty", "detail": "no objects under the prefix"}
            for r in cfg.regions
        ]
    return prefix, report.objects, problems


def refusal_message(model: str, version: str, target: str, prefix: str, problems: list[dict]) -> str:
    by_region: dict[str, list[str]] = {}
    for p in problems:
        by_region.setdefault(p["region"], []).append(
            f"{p['key']} ({p['problem']}{': ' + p['detail'] if p['detail'] and p['problem'] != 'missing' else ''})"
        )
    lines = [
        f"promotion of {model} version {version} to {target} refused: its artifacts are not verified in "
        f"every region (regions: {', '.join(sorted(by_region))})."
    ]
    for region in sorted(by_region):
        objs = by_region[region]
        shown = objs[:10] + ([f"... and {len(objs) - 10} more"] if len(objs) > 10 else [])
        lines.append(f"  region {region}: " + "; ".join(shown))
    lines.append(f"Repair with: xregion replicate resync --prefix {prefix}")
    lines.append("then promote again.")
    return "\n".join(lines)


def _request_user() -> str | None:
    try:
        from flask import has_request_context, request
    except ImportError:
        return None
    if not has_request_context():
        return None
    auth = request.authorization
    if auth and auth.username:
        return auth.username
    return None


def _request_via() -> str:
    try:
        from flask import has_request_context, request

        if has_request_context():
            return f"rest {request.remote_addr or ''} {request.headers.get('User-Agent', '')[:60]}".strip()
    except ImportError:
        pass
    return "store"


class XRegionRegistryStore(SqlAlchemyStore):
    """MLflow's SqlAlchemyStore for the registry, with promotion gated on cross-region replication."""

    def __init__(self, store_uri: str, tracking_uri: str | None = None, read_db_uri: str | None = None, **_):
        db_uri = store_uri[len(PREFIX) :] if store_uri.startswith(PREFIX) else store_uri
        if read_db_uri and read_db_uri.startswith(PREFIX):
            read_db_uri = read_db_uri[len(PREFIX) :]
        from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR

        read_db_uri = read_db_uri or os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR) or None
        super().__init__(db_uri, read_db_uri=read_db_uri)
        self.cfg = load_config()
        self.tracking_uri = tracking_uri

    # --- what a version's artifacts are -------------------------------------------------------
    def artifact_location(self, name: str, version: str) -> str:
        uri = self.get_model_version_download_uri(name, version)
        if urlsplit(uri).scheme == "models":  # an MLflow 3 logged model: models:/m-<id>
            from mlflow.store.artifact.utils.models import _parse_model_uri
            from mlflow.tracking import MlflowClient

            parsed = _parse_model_uri(uri)
            if parsed.model_id:
                return MlflowClient(tracking_uri=self.tracking_uri).get_logged_model(parsed.model_id).artifact_location
            return self.artifact_location(parsed.name, parsed.version)
        return uri

    def gate(self, name: str, version: str, target: str) -> dict:
        """Raise ReplicationGateError unless every artifact of the version verifies in every region."""
        location = self.artifact_location(name, version)
        try:
            prefix, total, problems = check_replicated(self.cfg, location)
        except NotReplicatedURI as err:
            raise ReplicationGateError(
                f"promotion of {name} version {version} to {target} refused: {err}. Only versions whose "
                f"artifacts live in a replicated location can go to production.",
                [],
                "",
            ) from None
        if problems:
            events.record(
                "gate.refused", model=name, version=str(version), target=target, prefix=prefix, problems=problems[:50]
            )
            raise ReplicationGateError(refusal_message(name, version, target, prefix, problems), problems, prefix)
        return {"prefix": prefix, "objects": total}

    def _is_production(self, stage: str) -> bool:
        return stage.lower() == self.cfg.registry.production_stage.lower()

    # --- who and why ------------------------------------------------------------------------
    def _consume(self, name: str, version: str) -> tuple[str, str]:
        mv = super().get_model_version(name, version)
        reason = mv.tags.get(REASON_TAG, "")
        actor = mv.tags.get(ACTOR_TAG)
        for key in (REASON_TAG, ACTOR_TAG):
            if key in mv.tags:
                super().delete_model_version_tag(name, version, key)
        who = _request_user() or actor or os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
        return who, reason

    def _record(self, name: str, version: str, record: dict) -> None:
        ms = int(time.time() * 1000)
        key = f"{TRANSITION_TAG}{ms}"
        tags = super().get_model_version(name, version).tags
        while key in tags:  # two transitions in one millisecond
            ms += 1
            key = f"{TRANSITION_TAG}{ms}"
        super().set_model_version_tag(name, version, ModelVersionTag(key, json.dumps(record, sort_keys=True)))

    def _push_history(self, name: str, version: str) -> None:
        rm = super().get_registered_model(name)
        try:
            history = json.loads(rm.tags.get(HISTORY_TAG, "[]"))
        except json.JSONDecodeError:
            history = []
        history = [v for v in history if str(v) != str(version)] + [str(version)]
        super().set_registered_model_tag(name, RegisteredModelTag(HISTORY_TAG, json.dumps(history[-HISTORY_LEN:])))

    # --- gated operations -------------------------------------------------------------------
    def transition_model_version_stage(self, name, version, stage, archive_existing_versions):
        before = super().get_model_version(name, version)
        production = self._is_production(stage)
        verified = self.gate(name, version, stage) if production else None
        displaced = []
        if archive_existing_versions:
            displaced = [mv for mv in super().get_latest_versions(name, [stage]) if str(mv.version) != str(version)]
        who, reason = self._consume(name, version)
        result = super().transition_model_version_stage(name, version, stage, archive_existing_versions)
        when = datetime.now(UTC).isoformat(timespec="milliseconds")
        via = _request_via()
        self._record(
            name,
            version,
            {
                "who": who,
                "when": when,
                "from": before.current_stage,
                "to": result.current_stage,
                "reason": reason,
                "via": via,
            },
        )
        for mv in displaced:
            self._record(
                name,
                mv.version,
                {
                    "who": who,
                    "when": when,
                    "from": mv.current_stage,
                    "to": ARCHIVED,
                    "reason": f"archived: version {version} moved to {result.current_stage}"
                    + (f" ({reason})" if reason else ""),
                    "via": via,
                },
            )
        if production:
            self._push_history(name, version)
            events.record(
                "promotion",
                model=name,
                version=str(version),
                stage=result.current_stage,
                previous_stage=before.current_stage,
                archived=[str(mv.version) for mv in displaced],
                who=who,
                reason=reason,
                objects=verified["objects"],
                prefix=verified["prefix"],
            )
        return result

    def set_registered_model_alias(self, name, alias, version):
        production = alias == self.cfg.registry.production_alias
        verified = self.gate(name, version, f"@{alias}") if production else None
        previous = (super().get_registered_model(name).aliases or {}).get(alias)
        who, reason = self._consume(name, version)
        super().set_registered_model_alias(name, alias, version)
        record = {
            "who": who,
            "when": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "from": f"@{alias} on version {previous}" if previous else f"@{alias} unset",
            "to": f"@{alias}",
            "reason": reason,
            "via": _request_via(),
        }
        self._record(name, version, record)
        if production:
            self._push_history(name, version)
            events.record(
                "promotion",
                model=name,
                version=str(version),
                alias=alias,
                previous_version=str(previous) if previous else None,
                who=who,
                reason=reason,
                objects=verified["objects"],
                prefix=verified["prefix"],
            )
