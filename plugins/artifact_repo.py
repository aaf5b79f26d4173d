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
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    UNAUTHENTICATED,
)
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.utils.file_utils import relative_path_to_artifact_path

from xregion.config import ConfigError, load_config
from xregion.store import AccessError, ObjectNotFound, StoreError
from xregion.uris import NotReplicatedURI, key_prefix

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
            cfg = load_config()
            self.root = key_prefix(artifact_uri, cfg)
        except (ConfigError, NotReplicatedURI) as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        self.replicator = shared_replicator(cfg)

    def _key(self, *parts: str | None) -> str:
        key = posixpath.join(self.root, *[p.strip("/") for p in parts if p])
        if ".." in key.split("/"):
            raise MlflowException(f"invalid artifact path {key!r}", error_code=INVALID_PARAMETER_VALUE)
        return key

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
        self._put(self._key(artifact_path, os.path.basename(local_file)), local_file)

    def log_artifacts(self, local_dir, artifact_path=None):
        local_dir = os.path.abspath(local_dir)
        for root, _, filenames in os.walk(local_dir):
            rel = os.path.relpath(root, local_dir)
            sub = (
                artifact_path
                if rel == "."
                else posixpath.join(artifact_path or "", relative_path_to_artifact_path(rel))
            )
            for name in filenames:
                self._put(self._key(sub, name), os.path.join(root, name))

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
        try:
            self.replicator.delete_tree(base)
        except StoreError as err:
            raise self._error(err, "Failed to delete artifacts in") from None
