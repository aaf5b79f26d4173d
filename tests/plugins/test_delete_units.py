"""A tree delete whose delete fails in one region (a region that dies between the listing and the
delete) owes that region the delete, per key and for the tree: nothing may be left behind there.
Regression: the failure's log line subscripted the key set, and the TypeError dropped the owed
delete (the chaos campaign's seed 1001, async: region b kept a deleted object). And a converge
whose ledger's newest write no region holds any more (seed 1004). No stack: regions in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from xregion.config import EMBEDDED_CONFIG, load_config
from xregion.objects import GEN_META, ObjectInfo
from xregion.payload import Payload
from xregion.plugins.outbox import KeyState
from xregion.plugins.reconcile import Outcome, converge
from xregion.plugins.replication import Replicator
from xregion.store import ObjectNotFound, RegionUnavailable, StoreError


class ListedStore:
    """A region that lists its keys and deletes them, or refuses the delete (``fail``)."""

    def __init__(self, name: str, keys: set[str], fail: bool = False):
        self.name, self.keys, self.fail = name, set(keys), fail
        self.markers: dict[str, int] = {}

    def list(self, prefix: str = ""):
        yield from (ObjectInfo(k, 1) for k in sorted(self.keys) if k.startswith(prefix))

    def _refuse(self) -> None:
        if self.fail:
            raise StoreError(f"region {self.name}: connection refused")

    def put_bytes(self, key, data, gen=None, **_):  # the delete markers (plugins/tombstones.py)
        self._refuse()
        self.markers[key] = gen

    def stat(self, key):
        self._refuse()
        return ObjectInfo(key, 1, etag=key) if key in self.keys else None

    def delete(self, key, if_match=None):
        self._refuse()
        self.keys.discard(key)


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


class HeldStore:
    """A region holding whole objects (bytes, generation, hash), as the converge path reads them."""

    def __init__(self, objects: dict | None = None):
        self.objects = dict(objects or {})

    def stat(self, key):
        if key not in self.objects:
            return None
        data, gen = self.objects[key]
        return ObjectInfo(key, len(data), sha256=hashlib.sha256(data).hexdigest(), etag=str(gen), gen=gen)

    def get_file(self, key, local):
        if key not in self.objects:
            raise ObjectNotFound(key)
        data, gen = self.objects[key]
        Path(local).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        return ObjectInfo(key, len(data), sha256=digest, gen=gen, recorded=digest)

    def put_file(self, key, local, sha256=None, gen=None, **_):
        return self.put_bytes(key, Path(local).read_bytes(), gen=gen)

    def put_bytes(self, key, data, gen=None, **_):
        self.objects[key] = (data, gen)
        return ObjectInfo(key, len(data), etag=str(gen), gen=gen)

    def delete(self, key, if_match=None):
        self.objects.pop(key, None)


KEY = "mlartifacts/1/run/artifacts/model.bin"


def held_replicator(tmp_path):
    """A replicator over two in-memory regions, with no background worker: what is owed stays in
    the ledger until a test converges it."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    stores = {a: HeldStore(), b: HeldStore()}
    rep = Replicator(cfg, tmp_path / "ledger.sqlite", mode="sync", region_stores=stores)
    rep.kick = lambda: None
    return rep, stores, (a, b)


def test_a_write_that_landed_but_was_never_acknowledged_is_converged_not_owed_forever(tmp_path):
    """A writer killed after its put reached region a but before it was acknowledged: the ledger's
    newest is the older write, which no region holds any more. The converge takes the newer copy
    (as reads do) instead of looking forever for a generation that is gone (the chaos campaign's
    still_owed, seed 1004)."""
    rep, stores, (a, b) = held_replicator(tmp_path)
    key = KEY
    old = rep.outbox.begin_write(key)
    v1 = b"v1"
    rep.outbox.end_write(key, old, KeyState(key, old, "put", hashlib.sha256(v1).hexdigest(), 2), regions=[a, b])
    new = old + 1  # the killed write: it reached a, replacing v1 there, and was never acknowledged
    stores[a].objects[key] = (b"v2", new)
    rep.outbox.owe("put", key, b, reason="region-down", gen=new)
    item = next(i for i in rep.outbox.items() if i.region == b)
    assert converge(rep, item) is Outcome.DONE
    assert stores[b].objects[key] == (b"v2", new)


def test_a_put_deleted_by_another_ledger_is_recorded_deleted_not_copied_back(tmp_path):
    """A proxied put reached only region b (a's S3 was down, so a is owed it); then a client with a
    ledger of its own deleted the key in b. Paying a the put would resurrect it (with the writer's
    bytes) or look for ever for a copy that is gone: the chaos campaign's seed 1008, both modes.
    The converge records the delete instead, and region a stays empty."""
    rep, stores, (a, b) = held_replicator(tmp_path)
    key = KEY
    gen = rep.outbox.begin_write(key)
    v1 = b"v1"
    stores[b].objects[key] = (v1, gen)
    rep.outbox.end_write(
        key, gen, KeyState(key, gen, "put", hashlib.sha256(v1).hexdigest(), 2), owe=[(a, "region-down")]
    )
    del stores[b].objects[key]  # the other ledger's delete
    item = next(i for i in rep.outbox.items() if i.region == a)
    assert converge(rep, item) is Outcome.DONE
    assert key not in stores[a].objects and rep.outbox.newest(key).deleted


def test_a_put_raced_by_this_ledgers_own_delete_is_not_recorded_deleted(tmp_path):
    """The guard's other side: a put newer than this ledger's own delete, whose copies that delete
    removed, is owed as a concurrent write. It must be spread (from the writer's bytes, when it has
    them; here it has none, so the converge says no region holds it), never recorded as deleted."""
    rep, stores, (a, b) = held_replicator(tmp_path)
    key = KEY
    gen = rep.outbox.begin_write(key)
    rep.outbox.end_write(key, gen, KeyState(key, gen, "put", hashlib.sha256(b"v2").hexdigest(), 2))
    rep.outbox.owe("put", key, a, reason="concurrent-write", gen=gen)
    item = next(i for i in rep.outbox.items() if i.region == a)
    with pytest.raises(StoreError):  # no region holds it, and this process has no seed of it
        converge(rep, item)
    assert not rep.outbox.newest(key).deleted


class AnswerLostStore(HeldStore):
    """A region whose store keeps the bytes and then dies before it answers (``down``: refuses)."""

    def __init__(self, objects=None, down: bool = False):
        super().__init__(objects)
        self.down = down

    def put_object_body(self, key, body, args, condition=None, check=None):
        if self.down:
            raise RegionUnavailable("connection refused")
        self.objects[key] = (bytes(body), int(args["Metadata"][GEN_META]))
        raise RegionUnavailable("connection reset before the answer")


@pytest.mark.parametrize("before", ["put", "delete"])
def test_a_write_refused_everywhere_that_landed_in_one_region_is_taken_back(tmp_path, before):
    """Both S3 stores killed during a put: b stored it and died before answering, a refused. The
    writer got an error and the ledger recorded nothing, so b alone kept the failed write and no
    one owed anything (the chaos campaign's seed 1001, async: diverged). Now every region it was
    tried in is owed a converge, which takes b back to the newest acknowledged write."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    old = b"v1"
    stores = {a: AnswerLostStore(down=True), b: AnswerLostStore()}
    rep = Replicator(cfg, tmp_path / "ledger.sqlite", mode="sync", region_stores=stores)
    rep.kick = lambda: None
    gen = rep.outbox.begin_write(KEY)
    if before == "put":
        for s in stores.values():
            s.objects[KEY] = (old, gen)
        rep.outbox.end_write(KEY, gen, KeyState(KEY, gen, "put", hashlib.sha256(old).hexdigest(), len(old)))
    else:
        rep.outbox.end_write(KEY, gen, KeyState(KEY, gen, "delete"))
    src = tmp_path / "model.bin"
    src.write_bytes(b"v2, never acknowledged")
    with pytest.raises(StoreError):
        rep.put_file(KEY, src)
    assert stores[b].objects[KEY][0] == src.read_bytes()  # it landed
    stores[a].down = False
    for item in rep.outbox.items():
        assert converge(rep, item) is Outcome.DONE
    held = {name: s.objects.get(KEY, (None,))[0] for name, s in stores.items()}
    assert held == dict.fromkeys(stores, old if before == "put" else None)


class FlakyAnswerStore(AnswerLostStore):
    """``unreachable``: its stat fails too, as a store that died would."""

    unreachable = False

    def stat(self, key):
        if self.unreachable:
            raise RegionUnavailable("connection refused")
        return super().stat(key)


def test_a_failed_write_waits_for_the_region_it_landed_in_instead_of_being_forgotten(tmp_path):
    """Chaos seed 1001, async, on one core: a new key's put landed in b just before b's store
    died, and a refused it. Both regions were owed their converge, but a converge that ran while b
    could not be asked found the key in no region that answered and dropped its row: b kept a write
    that a never got (diverged). The rows now wait until b answers; then the regions agree."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    stores = {a: FlakyAnswerStore(down=True), b: FlakyAnswerStore()}
    rep = Replicator(cfg, tmp_path / "ledger.sqlite", mode="async", region_stores=stores)
    rep.kick = lambda: None
    src = tmp_path / "model.bin"
    src.write_bytes(b"never acknowledged")
    with pytest.raises(StoreError):
        rep.put_file(KEY, src)
    assert stores[b].objects[KEY][0] == src.read_bytes()  # it landed in b
    stores[a].down, stores[b].unreachable = False, True
    for item in rep.outbox.items():
        with pytest.raises(StoreError):  # nothing can be concluded while b cannot be asked
            converge(rep, item)
    assert sorted(i.region for i in rep.outbox.items()) == [a, b]
    stores[b].unreachable = False
    for item in rep.outbox.items():
        assert converge(rep, item) is Outcome.DONE
    held = {name: s.objects.get(KEY, (None,))[0] for name, s in stores.items()}
    assert held[a] == held[b], held


class TreeStore(HeldStore):
    """A region that lists, deletes and takes the writer's own bytes; ``on_list`` runs once, when
    the tree delete lists it (to interleave another write there)."""

    def __init__(self, on_list=None):
        super().__init__()
        self.on_list = on_list

    def list(self, prefix: str = ""):
        if self.on_list:
            self.on_list, hook = None, self.on_list
            hook()
        yield from (ObjectInfo(k, len(d)) for k, (d, _) in sorted(self.objects.items()) if k.startswith(prefix))

    def delete_many(self, keys):
        for k in keys:
            self.objects.pop(k, None)

    def put_payload(self, key, payload, gen=None, **_):
        return self.put_bytes(key, Path(payload.path).read_bytes(), gen=gen)

    def put_object_body(self, key, body, args, condition=None, check=None):  # a writer's own put
        gen = int(args["Metadata"][GEN_META])
        return {"ETag": self.put_bytes(key, bytes(body), gen=gen).etag}


def test_a_put_that_lands_while_a_tree_delete_runs_ends_in_every_region(tmp_path):
    """Two clients of one ledger: a delete of the key begins, then a put of it (newer) lands in
    region a before the delete reaches a, and ends after the delete's check for raced puts. The
    delete removed the newer copy from a, the put owed only b, and the regions disagreed (the chaos
    campaign's seed 34, async). Now a key with a write still in progress is converged everywhere."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    src = tmp_path / "model.bin"
    src.write_bytes(b"v1, the newer put")
    started = {}

    def put_lands_in_a():
        started["gen"] = rep.outbox.begin_write(KEY)
        stores[a].objects[KEY] = (src.read_bytes(), started["gen"])

    stores = {a: TreeStore(on_list=put_lands_in_a), b: TreeStore()}
    rep = Replicator(cfg, tmp_path / "ledger.sqlite", mode="async", region_stores=stores)
    rep.kick = lambda: None
    old = rep.outbox.begin_write(KEY)
    for s in stores.values():
        s.objects[KEY] = (b"v0", old)
    rep.outbox.end_write(KEY, old, KeyState(KEY, old, "put", hashlib.sha256(b"v0").hexdigest(), 2))
    rep.delete_tree(KEY)
    # the region deletes spare a copy newer than the delete (plugins/tombstones.py); before them
    # the delete took it, and the converge of a write in progress below brought it back
    assert stores[a].objects[KEY] == (src.read_bytes(), started["gen"])
    gen, payload = started["gen"], Payload.read(src)
    rep.seeds.keep(KEY, gen, payload, {}, {b})
    rep.outbox.end_write(
        KEY, gen, KeyState(KEY, gen, "put", payload.sha256, payload.size), owe=[(b, "replicate")], source=a
    )
    for _ in range(3):
        for item in rep.outbox.items():
            if converge(rep, item) is Outcome.DONE:
                rep.outbox.done(item)
    held = {name: s.objects.get(KEY, (None,))[0] for name, s in stores.items()}
    assert held == dict.fromkeys(stores, src.read_bytes())
