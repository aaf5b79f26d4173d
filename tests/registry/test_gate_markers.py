"""The protection markers every artifact write and delete reads: listed now, every time (a
promotion on another server counts at once), but each marker's body read once per ETag. A
platform keeps a marker for every version in production, and reading each on every write made
the chaos campaign's writes three times slower as markers piled up. No stack."""

from __future__ import annotations

import hashlib

from xregion.objects import ObjectInfo
from xregion.plugins.gate import _MARKER_BODIES, PROTECTED, marker_key, protected_prefixes


class MarkerStore:
    """A region's markers: listed with their ETags (MD5, as S3 computes it), bodies counted."""

    def __init__(self):
        self.bodies: dict[str, bytes] = {}
        self.reads = 0

    def __repr__(self) -> str:
        return f"MarkerStore({id(self)})"

    def list(self, prefix: str = ""):
        for key, body in sorted(self.bodies.items()):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(body), etag=hashlib.md5(body).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        return self.bodies[key]


def test_each_marker_body_is_read_once_and_every_listing_is_fresh():
    store = MarkerStore()
    for v in range(1, 51):
        store.bodies[marker_key("recsys", str(v))] = f"mlartifacts/1/models/m-{v}/artifacts".encode()
    assert len(protected_prefixes(store)) == 50 and store.reads == 50
    assert len(protected_prefixes(store)) == 50 and store.reads == 50  # nothing read again
    store.bodies[marker_key("recsys", "7")] = b"mlartifacts/1/models/m-7b/artifacts"  # rewritten
    del store.bodies[marker_key("recsys", "8")]  # released
    found = protected_prefixes(store)
    assert store.reads == 51 and len(found) == 49
    assert "mlartifacts/1/models/m-7b/artifacts" in found and "mlartifacts/1/models/m-8/artifacts" not in found
    assert all(k.startswith(PROTECTED) for k in store.bodies)
    # what the cache holds is what the last listing showed: released and rewritten markers go
    assert sorted(k for k, _ in _MARKER_BODIES[repr(store)]) == sorted(store.bodies)
