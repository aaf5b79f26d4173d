"""A tree delete whose delete fails in one region (a region that dies between the listing and the
delete) owes that region the delete, per key and for the tree: nothing may be left behind there.
Regression: the failure's log line subscripted the key set, and the TypeError dropped the owed
delete (the chaos campaign's seed 1001, async: region b kept a deleted object)."""

from __future__ import annotations

from xregion.config import EMBEDDED_CONFIG, load_config
from xregion.objects import ObjectInfo
from xregion.plugins.replication import Replicator
from xregion.store import StoreError


class ListedStore:
    """A region that lists its keys and deletes them, or refuses the delete (``fail``)."""

    def __init__(self, name: str, keys: set[str], fail: bool = False):
        self.name, self.keys, self.fail = name, set(keys), fail

    def list(self, prefix: str = ""):
        yield from (ObjectInfo(k, 1) for k in sorted(self.keys) if k.startswith(prefix))

    def delete_many(self, keys: list[str]) -> None:
        if self.fail:
            raise StoreError(f"region {self.name}: connection refused")
        self.keys -= set(keys)


def test_a_region_whose_delete_fails_is_owed_the_delete_of_every_key_and_the_tree(tmp_path):
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    keys = {"mlartifacts/1/run/artifacts/model.bin", "mlartifacts/1/run/artifacts/MLmodel"}
    stores = {a: ListedStore(a, keys), b: ListedStore(b, keys, fail=True)}
    rep = Replicator(cfg, tmp_path / "ledger.sqlite", mode="sync", region_stores=stores)
    rep.kick = lambda: None  # no background worker: what is owed stays in the ledger to be read
    rep.delete_tree("mlartifacts/1/run")
    assert stores[a].keys == set() and stores[b].keys == keys
    owed = {(o.op, o.key, o.region, bool(o.tree)) for o in rep.outbox.items()}
    assert owed == {("delete", k, b, False) for k in keys} | {("delete", "mlartifacts/1/run", b, True)}
    assert all(rep.outbox.newest(k).deleted for k in keys)  # reads and listings see the delete at once
