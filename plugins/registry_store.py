"""The gated model registry: MLflow's own SQL registry store, with production gated on replication.

Registered as an ``mlflow.model_registry_store`` plugin for the URI schemes
``xregion+postgresql``, ``xregion+postgresql+psycopg2`` and ``xregion+sqlite``: the store URI is
MLflow's database URI with ``xregion+`` in front. ``mlflow server --registry-store-uri
xregion+postgresql+psycopg2://...`` runs it inside the server, so the MLflow UI, the REST API and
every client are gated, not only the Python client.

* Moving a version to the production stage (``registry.production_stage``) or pointing the
  production alias (``registry.production_alias``) at it succeeds only when every artifact of the
  version exists in every region with the same size and recorded sha256. Otherwise HTTP 409
  (RESOURCE_CONFLICT) names the regions, the objects and ``xregion replicate resync --prefix ...``.
  The check and the commit hold a per-model lock (``gate.GateLock``); the version's artifacts are
  marked immutable before the check and stay so while it is in production.
* Production can only move to a verified version: deleting the production alias falls back to the
  newest version in the production stage only if that one verifies; a version (or model) that is
  in production cannot be deleted.
* A version's source must lie under the replicated artifacts prefix (HTTP 400 otherwise).
* Every stage transition and alias change is recorded on the version as a tag
  ``xregion.transition.<epoch ms>`` = JSON {who, when, from, to, reason, via} and in the event log;
  a promotion also appends to the model's ``xregion.production_history`` (what rollback follows).
* Who: with MLflow's auth on (``XREGION_AUTH=1`` in the server), the authenticated user only; else
  the ``xregion.actor`` tag the client set, else the server's OS user. Why: the ``xregion.reason``
  tag. Both tags are consumed.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_CONFLICT
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from xregion import events
from xregion.config import load_config
from xregion.store import StoreError, stores
from xregion.uris import NotReplicatedURI

from .gate import (
    GateLock,
    ReplicationGateError,
    check_replicated,
    protect,
    refusal_message,
    unprotect,
    validate_source,
)

PREFIX = "xregion+"
TRANSITION_TAG = "xregion.transition."
REASON_TAG = "xregion.reason"
ACTOR_TAG = "xregion.actor"
HISTORY_TAG = "xregion.production_history"
HISTORY_LEN = 20
ARCHIVED = "Archived"


def _request_user() -> str | None:
    try:
        from flask import has_request_context, request
    except ImportError:
        return None
    if not has_request_context():
        return None
    auth = request.authorization
    return auth.username if auth and auth.username else None


def _request_via() -> str:
    try:
        from flask import has_request_context, request

        if has_request_context():
            return f"rest {request.remote_addr or ''} {request.headers.get('User-Agent', '')[:60]}".strip()
    except ImportError:
        pass
    return "store"


def _may_manage(model: str) -> bool:
    """With MLflow's auth app: may the request's user manage ``model`` (admin, or MANAGE through a
    role or grant)? MLflow itself lets EDIT move stages and aliases; production asks for more."""
    from mlflow.server import auth as mlflow_auth  # the auth app of this very server process

    user = _request_user()
    if not mlflow_auth.is_auth_enabled():
        return True
    if not user:
        return False
    if mlflow_auth.store.get_user(user).is_admin:
        return True
    return mlflow_auth._resolve_user_permission_for_resource(user, "registered_model", model).can_manage


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class XRegionRegistryStore(SqlAlchemyStore):
    """MLflow's SqlAlchemyStore for the registry, with production gated on cross-region replication."""

    def __init__(self, store_uri: str, tracking_uri: str | None = None, read_db_uri: str | None = None, **_):
        db_uri = store_uri.removeprefix(PREFIX)
        if read_db_uri:
            read_db_uri = read_db_uri.removeprefix(PREFIX)
        from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR

        read_db_uri = read_db_uri or os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR) or None
        super().__init__(db_uri, read_db_uri=read_db_uri)
        self.cfg = load_config()
        self.tracking_uri = tracking_uri
        self.lock = GateLock(self.engine)
        self.authenticated = os.environ.get("XREGION_AUTH") == "1"

    @functools.cached_property
    def region_stores(self) -> dict:
        """Every region's store, made once: the gate asks every region on each promotion, and new
        S3 clients for each check cost more than the check (issue 13 note, 1 Dec)."""
        return stores(self.cfg)

    # --- what a version's artifacts are -------------------------------------------------------
    def _resolve(self, uri: str) -> str:
        from mlflow.store.artifact.utils.models import _parse_model_uri
        from mlflow.tracking import MlflowClient

        scheme = urlsplit(uri).scheme
        if scheme == "models":  # an MLflow 3 logged model (models:/m-<id>) or another version
            parsed = _parse_model_uri(uri)
            if parsed.model_id:
                return MlflowClient(tracking_uri=self.tracking_uri).get_logged_model(parsed.model_id).artifact_location
            return self.artifact_location(parsed.name, parsed.version)
        if scheme == "runs":
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            base = MlflowClient(tracking_uri=self.tracking_uri).get_run(run_id).info.artifact_uri
            return f"{base.rstrip('/')}/{path}".rstrip("/")
        return uri

    def artifact_location(self, name: str, version: str) -> str:
        return self._resolve(self.get_model_version_download_uri(name, version))

    def create_model_version(
        self,
        name,
        source,
        run_id=None,
        tags=None,
        run_link=None,
        description=None,
        local_model_path=None,
        model_id=None,
    ):
        validate_source(self.cfg, self._resolve(source))
        return super().create_model_version(
            name, source, run_id, tags, run_link, description, local_model_path, model_id
        )

    # --- the gate -------------------------------------------------------------------------------
    def gate(self, name: str, version: str, target: str) -> dict:
        """Mark the version immutable, then raise ReplicationGateError unless every artifact of it
        verifies in every region. Called with the model's lock held."""
        if self.authenticated and not _may_manage(name):
            raise MlflowException(
                f"moving {name} version {version} to {target} needs MANAGE on {name} "
                f"(a release manager's account); {_request_user() or 'nobody'} has less",
                error_code=PERMISSION_DENIED,
            )
        location = self.artifact_location(name, version)
        try:
            prefix = validate_source(self.cfg, location)
        except MlflowException as err:
            raise ReplicationGateError(
                f"promotion of {name} version {version} to {target} refused: {err.message}", [], ""
            ) from None
        try:
            # before the check: nothing under it changes now
            protect(self.cfg, name, str(version), prefix, self.region_stores)
        except StoreError as err:
            raise ReplicationGateError(
                f"promotion of {name} version {version} to {target} refused: a region's "
                f"store cannot be written ({err}); every region must hold the version",
                [],
                prefix,
            ) from None
        try:
            prefix, total, problems = check_replicated(self.cfg, location, self.region_stores)
        except NotReplicatedURI as err:
            raise ReplicationGateError(
                f"promotion of {name} version {version} to {target} refused: {err}", [], ""
            ) from None
        if problems:
            self._release_if_idle(name, str(version))
            events.record(
                "registry.gate_refused",
                model=name,
                version=str(version),
                target=target,
                prefix=prefix,
                problems=problems[:50],
            )
            raise ReplicationGateError(refusal_message(name, version, target, prefix, problems), problems, prefix)
        return {"prefix": prefix, "objects": total}

    def _in_production(self, name: str, version: str) -> bool:
        mv = super().get_model_version(name, version)
        return self._is_production(mv.current_stage) or self.cfg.registry.production_alias in (mv.aliases or [])

    def _release_if_idle(self, name: str, version: str) -> None:
        if not self._in_production(name, version):
            unprotect(self.cfg, name, version, self.region_stores)

    def _is_production(self, stage: str) -> bool:
        return stage.lower() == self.cfg.registry.production_stage.lower()

    # --- who and why ------------------------------------------------------------------------
    def _consume(self, name: str, version: str) -> tuple[str, str]:
        mv = super().get_model_version(name, version)
        reason, actor = mv.tags.get(REASON_TAG, ""), mv.tags.get(ACTOR_TAG)
        for key in (REASON_TAG, ACTOR_TAG):
            if key in mv.tags:
                super().delete_model_version_tag(name, version, key)
        if self.authenticated:  # a declared actor is a claim; the authenticated user is a fact
            return _request_user() or "unauthenticated", reason
        return _request_user() or actor or os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser(), reason

    def _record(self, name: str, version: str, record: dict) -> None:
        ms = int(time.time() * 1000)
        tags = super().get_model_version(name, version).tags
        while f"{TRANSITION_TAG}{ms}" in tags:  # two transitions in one millisecond
            ms += 1
        super().set_model_version_tag(
            name, version, ModelVersionTag(f"{TRANSITION_TAG}{ms}", json.dumps(record, sort_keys=True))
        )

    def _push_history(self, name: str, version: str) -> None:
        try:
            history = json.loads(super().get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
        except json.JSONDecodeError:
            history = []
        history = [v for v in history if str(v) != str(version)] + [str(version)]
        super().set_registered_model_tag(name, RegisteredModelTag(HISTORY_TAG, json.dumps(history[-HISTORY_LEN:])))

    # --- gated operations -------------------------------------------------------------------
    def transition_model_version_stage(self, name, version, stage, archive_existing_versions):
        with self.lock.held(name):
            before = super().get_model_version(name, version)
            production = self._is_production(stage)
            verified = self.gate(name, version, stage) if production else None
            displaced = (
                [mv for mv in super().get_latest_versions(name, [stage]) if str(mv.version) != str(version)]
                if archive_existing_versions
                else []
            )
            who, reason = self._consume(name, version)
            result = super().transition_model_version_stage(name, version, stage, archive_existing_versions)
            for mv in [before, *displaced]:
                self._release_if_idle(name, str(mv.version))
        when, via = _now(), _request_via()
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
            why = f"archived: version {version} moved to {result.current_stage}" + (f" ({reason})" if reason else "")
            self._record(
                name,
                mv.version,
                {"who": who, "when": when, "from": mv.current_stage, "to": ARCHIVED, "reason": why, "via": via},
            )
        if production:
            self._push_history(name, version)
            events.record(
                "registry.promotion",
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
        with self.lock.held(name):
            verified = self.gate(name, version, f"@{alias}") if production else None
            previous = (super().get_registered_model(name).aliases or {}).get(alias)
            who, reason = self._consume(name, version)
            super().set_registered_model_alias(name, alias, version)
            if production and previous and str(previous) != str(version):
                self._release_if_idle(name, str(previous))
        self._record(
            name,
            version,
            {
                "who": who,
                "when": _now(),
                "to": f"@{alias}",
                "reason": reason,
                "from": f"@{alias} on version {previous}" if previous else f"@{alias} unset",
                "via": _request_via(),
            },
        )
        if production:
            self._push_history(name, version)
            events.record(
                "registry.promotion",
                model=name,
                version=str(version),
                alias=alias,
                previous_version=str(previous) if previous else None,
                who=who,
                reason=reason,
                objects=verified["objects"],
                prefix=verified["prefix"],
            )

    def delete_registered_model_alias(self, name, alias):
        """Without the production alias, serving follows the newest version in the production stage:
        that one must verify, like any promotion."""
        if alias != self.cfg.registry.production_alias:
            return super().delete_registered_model_alias(name, alias)
        with self.lock.held(name):
            holder = (super().get_registered_model(name).aliases or {}).get(alias)
            fallback = [
                mv
                for mv in super().get_latest_versions(name, [self.cfg.registry.production_stage])
                if str(mv.version) != str(holder)
            ]
            if fallback:
                self.gate(name, str(fallback[0].version), f"production (@{alias} removed from version {holder})")
            super().delete_registered_model_alias(name, alias)
            if holder:
                self._release_if_idle(name, str(holder))

    def delete_model_version(self, name, version):
        with self.lock.held(name):
            if self._in_production(name, str(version)):
                raise MlflowException(
                    f"{name} version {version} is in production (stage {self.cfg.registry.production_stage} or "
                    f"@{self.cfg.registry.production_alias}): move production to another version first "
                    f"(xregion rollback {name}), then delete it",
                    error_code=RESOURCE_CONFLICT,
                )
            super().delete_model_version(name, version)
            unprotect(self.cfg, name, str(version), self.region_stores)

    def delete_registered_model(self, name):
        with self.lock.held(name):
            rm = super().get_registered_model(name)
            live = [mv for mv in rm.latest_versions or [] if self._is_production(mv.current_stage)]
            if live or self.cfg.registry.production_alias in (rm.aliases or {}):
                raise MlflowException(
                    f"{name} has a version in production: it cannot be deleted while it serves",
                    error_code=RESOURCE_CONFLICT,
                )
            super().delete_registered_model(name)
