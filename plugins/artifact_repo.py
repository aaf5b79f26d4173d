"""The ``xregion://`` MLflow artifact repository: every artifact in every region.

Behaves like MLflow's own S3 repository where users can tell: objects carry the Content-Type and
Content-Encoding guessed from the file name, ``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` (SSE, ...) is
honoured, and S3's refusals map to the same MLflow error codes (AccessDenied: PERMISSION_DENIED;
NoSuchBucket, NoSuchKey: RESOURCE_DOES_NOT_EXIST; InvalidAccessKeyId, SignatureDoesNotMatch:
UNAUTHENTICATED) with S3's message, instead of looking like an outage.

URI: ``xregion:///PATH`` (MLflow may store it as ``xregion:/PATH``: the same). It has no host: the regions file (XREGION_CONFIG) names the buckets,
and PATH is the same key prefix in each of them, so one URI means the same object set in every
region. Use it as ``mlflow server --artifacts-destination xregion:///mlartifacts`` (proxied: the
server writes), as ``--default-artifact-root xregion:///mlartifacts`` (clients write directly,
with the regions file and credentials in their environment), or as an experiment's
artifact_location.

Promoted artifacts are immutable (plugins/gate.py): while a model version is in production, a
marker ``_xregion/protected/<model>/<version>`` in every region's bucket names its key prefix,
and this repository refuses to write or delete anything under a protected prefix (HTTP 409
RESOURCE_CONFLICT), reading the markers at every call (a promotion writes its marker before it
verifies: nothing may be cached). The ``_xregion/`` namespace itself cannot be written or deleted
through the repository (HTTP 403), nor can a repository's root or the bucket's root (HTTP 400).
"""

from __future__ import annotations

import os
import posixpath

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_CONFLICT,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    UNAUTHENTICATED,
)
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.utils.file_utils import relative_path_to_artifact_path

from xregion.config import ConfigError, load_config
from xregion.objects import RESERVED
from xregion.store import AccessError, ObjectNotFound, StoreError
from xregion.uris import NotReplicatedURI, key_prefix
from xregion.workers import shared_pool

# the module, not its names: gate imports mlflow, whose first import loads this entry point, so a
# process that imports gate first would find it half-initialised and leave xregion:// unregistered
from . import gate
from .replication import NoRegionAvailable, shared_replicator

# as MLflow's S3 artifact repository maps S3's refusals: a permissions mistake is not an outage
S3_TO_MLFLOW = {
    "AccessDenied": PERMISSION_DENIED,
    "403": PERMISSION_DENIED,
    "NoSuchBucket": RESOURCE_DOES_NOT_EXIST,
    "NoSuchKey": RESOURCE_DOES_NOT_EXIST,
    "InvalidAccessKeyId": UNAUTHENTICATED,
    "SignatureDoesNotMatch": UNAUTHENTICATED,
}


class XRegionArtifactRepository(ArtifactRepository):
    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        try:
            self.cfg = load_config()
            self.root = key_prefix(artifact_uri, self.cfg)
        except (ConfigError, NotReplicatedURI) as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        self.replicator = shared_replicator(self.cfg)

    def _rel(self, *parts: str | None) -> str:
        """The path below the repository's root that ``parts`` name ('' for the root itself)."""
        segments = [s for p in parts if p for s in p.split("/") if s not in ("", ".")]
        if ".." in segments:
            raise MlflowException(f"invalid artifact path {'/'.join(segments)!r}", error_code=INVALID_PARAMETER_VALUE)
        return "/".join(segments)

    def _key(self, *parts: str | None) -> str:
        return "/".join(p for p in (self.root, self._rel(*parts)) if p)

    # --- what may not change ------------------------------------------------------------------
    def _protected(self) -> set[str]:
        """Every region's protection markers, read now (plugins/gate.py ``protected_now``)."""
        rep = self.replicator
        try:
            # not the replicator's pool: its workers may all wait on a frozen region
            return gate.protected_now(rep.marker_stores(), shared_pool(), rep.health)
        except gate.MarkersUnreadable as err:
            raise MlflowException(
                f"cannot read the protection markers of promoted models in any region, so nothing is changed: {err}",
                error_code=TEMPORARILY_UNAVAILABLE,
            ) from None

    def _check(self, keys: list[str], action: str) -> None:
        """Refuse ``action`` (write, delete) of ``keys`` in xregion's own namespace or under the
        prefix of a model version in production."""
        for key in keys:
            rel = key[len(self.root) :].lstrip("/") if self.root and key.startswith(self.root) else key
            if any(k == RESERVED or k.startswith(RESERVED + "/") for k in (key, rel)):
                raise MlflowException(
                    f"refusing to {action} {key!r}: {RESERVED}/ is reserved for xregion's own markers "
                    "(the protection of promoted models); it cannot be changed through the artifact API",
                    error_code=PERMISSION_DENIED,
                )
        prefixes = self._protected()
        for key in keys:
            if (prefix := gate.is_protected(key, prefixes)) is not None:
                raise MlflowException(
                    f"refusing to {action} {key!r}: the artifacts under {prefix!r} belong to a model version "
                    "in production and are immutable; move production to another version first",
                    error_code=RESOURCE_CONFLICT,
                )

    def _error(self, err: StoreError, action: str = "Failed to access artifacts in") -> MlflowException:
        if isinstance(err, AccessError):
            return MlflowException(
                f"{action} {self.artifact_uri}: {err.s3_message} ({err})",
                error_code=S3_TO_MLFLOW.get(err.code, INTERNAL_ERROR),
            )
        return MlflowException(f"artifact store unavailable in every region: {err}", error_code=TEMPORARILY_UNAVAILABLE)

    def _put(self, key: str, local_file: str) -> None:
        try:
            self.replicator.put_file(key, local_file)
        except StoreError as err:
            raise self._error(err, "Failed to upload artifacts to") from None
        except ValueError as err:  # MLFLOW_S3_UPLOAD_EXTRA_ARGS that is not a JSON object
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None

    def log_artifact(self, local_file, artifact_path=None):
        key = self._key(artifact_path, os.path.basename(local_file))
        self._check([key], "write")
        self._put(key, local_file)

    def log_artifacts(self, local_dir, artifact_path=None):
        local_dir = os.path.abspath(local_dir)
        files = []
        for root, _, filenames in os.walk(local_dir):
            rel = os.path.relpath(root, local_dir)
            sub = (
                artifact_path
                if rel == "."
                else posixpath.join(artifact_path or "", relative_path_to_artifact_path(rel))
            )
            files += [(self._key(sub, name), os.path.join(root, name)) for name in filenames]
        self._check([key for key, _ in files], "write")  # all or nothing
        for key, path in files:
            self._put(key, path)

    def list_artifacts(self, path=None):
        base = self._key(path)
        prefix = base + "/" if base else ""
        try:
            dirs, files = self.replicator.list_dir(prefix)
        except StoreError as err:
            raise self._error(err, "Failed to list artifacts in") from None
        infos = [FileInfo(posixpath.relpath(d.rstrip("/"), self.root or "."), True, None) for d in dirs]
        infos += [
            FileInfo(posixpath.relpath(k, self.root or "."), False, size)
            for k, size in files.items()
            if not k.endswith("/")
        ]
        return sorted(infos, key=lambda f: f.path)

    def _download_file(self, remote_file_path, local_path):
        try:
            self.replicator.get_file(self._key(remote_file_path), local_path)
        except ObjectNotFound as err:
            raise MlflowException(str(err), error_code=RESOURCE_DOES_NOT_EXIST) from None
        except (NoRegionAvailable, AccessError) as err:
            raise self._error(err, "Failed to download artifacts from") from None

    def delete_artifacts(self, artifact_path=None):
        base = self._key(artifact_path)
        whole_store = self.cfg.artifacts.prefix.strip("/")
        if not self._rel(artifact_path) or not base or base == whole_store:
            raise MlflowException(
                f"refusing to delete {'the bucket root' if not base else repr(base)} through "
                f"{self.artifact_uri}: the root of a repository, of the bucket or of the artifact store is never "
                "deleted whole; delete the paths under it that you mean",
                error_code=INVALID_PARAMETER_VALUE,
            )
        self._check([base], "delete")
        try:
            self.replicator.delete_tree(base)
        except StoreError as err:
            raise self._error(err, "Failed to delete artifacts in") from None


def _register_when_imported_first() -> None:
    """MLflow loads its artifact-repository entry points on its own first import. When that import
    began inside this module (a process whose first import is this module), the class did not exist
    yet, MLflow warned and left xregion:// unknown: register it now, as the entry point would have."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("xregion", XRegionArtifactRepository)


_register_when_imported_first()
