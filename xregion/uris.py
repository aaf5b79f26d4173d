"""What an artifact URI means as object keys.

``xregion:///PATH`` names the key ``PATH`` in every region's bucket: one URI, the same object set
in every region (the regions file says which buckets). A proxied location
``mlflow-artifacts:/PATH`` (what clients of ``mlflow server --artifacts-destination
xregion:///PREFIX`` record) is ``PREFIX/PATH``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from xregion.errors import XRegionError

from .config import XRegionConfig

SCHEME = "xregion"


class NotReplicatedURI(XRegionError, ValueError):
    pass


def key_prefix(artifact_uri: str, cfg: XRegionConfig) -> str:
    """The key prefix (no leading or trailing slash) an artifact location stands for."""
    parts = urlsplit(artifact_uri)
    if parts.scheme == SCHEME:
        if parts.netloc:
            raise NotReplicatedURI(
                f"{artifact_uri!r}: xregion URIs have no host (regions come from the regions file); "
                f"write xregion:///{parts.netloc}{parts.path}"
            )
        return parts.path.strip("/")
    if parts.scheme == "mlflow-artifacts":
        return f"{cfg.artifacts.prefix}/{parts.path.strip('/')}".strip("/")
    raise NotReplicatedURI(f"{artifact_uri!r} is not a replicated location (xregion:/// or mlflow-artifacts:/)")


def uri_for(key: str) -> str:
    return f"{SCHEME}:///{key.strip('/')}"
