"""A put and a delete of one key by writers that keep different ledgers (a direct client with its
own, and an MLflow server's proxy): the regions must end up agreeing, whichever write is newer.
Each test forces one interleaving the chaos campaign found (seed 25, sync: a client's copy landed
in region b after the proxy's delete had passed b, and b kept the deleted key). Their only common
ground is the regions' stores, which carry the delete markers of plugins/tombstones.py.
No stack: regions in memory, shared by two replicators with ledgers of their own."""

from __future__ import annotations

from xregion.config import EMBEDDED_CONFIG, load_config
from xregion.objects import GEN_META, PreconditionFailed
from xregion.payload import Payload
from xregion.plugins.reconcile import Outcome, converge
from xregion.plugins.replication import Replicator

from .test_delete_units import KEY, TreeStore


class InterleavedStore(TreeStore):
    """A region whose next write of ``KEY`` first lets ``before_put`` run (once)."""

    before_put = None

    def put_bytes(self, key, data, gen=None, **kw):
        if key == KEY and self.before_put:
            self.before_put, hook = None, self.before_put
            hook()
        return super().put_bytes(key, data, gen=gen, **kw)


class ConditionalStore(TreeStore):
    """A region that honours If-Match / If-None-Match on every write, as S3 does; its next write
    of ``KEY`` first lets ``before_write`` run (once), as a write racing it."""

    before_write = None

    def _condition(self, key, if_match, if_none_match) -> None:
        if key == KEY and self.before_write:
            self.before_write, hook = None, self.before_write
            hook()
        have = self.stat(key)
        if (if_none_match and have is not None) or (if_match and (have is None or have.etag != if_match)):
            raise PreconditionFailed(f"{key} changed")

    def put_payload(self, key, payload, gen=None, if_match=None, if_none_match=False, **_):
        self._condition(key, if_match, if_none_match)
        return super().put_payload(key, payload, gen=gen)

    def put_file(self, key, local, sha256=None, gen=None, **kw):
        return self.put_payload(key, Payload.read(local), gen=gen, **kw)

    def put_object_body(self, key, body, args, condition=None, check=None):  # a writer's own put
        condition = condition or {}
        self._condition(key, condition.get("IfMatch", "").strip('"') or None, condition.get("IfNoneMatch") == "*")
        return {"ETag": self.put_bytes(key, bytes(body), gen=int(args["Metadata"][GEN_META])).etag}


def two_ledgers(tmp_path, stores):
    cfg = load_config(EMBEDDED_CONFIG)
    client = Replicator(cfg, tmp_path / "client.sqlite", mode="async", region_stores=stores)
    server = Replicator(cfg, tmp_path / "server.sqlite", mode="sync", region_stores=stores)
    for rep in (client, server):
        rep.kick = lambda: None  # no background workers: the test converges, in its own order
    return client, server


def racing_writers(tmp_path, store_a, older: bytes, newer: bytes):
    """Region names, their stores (``store_a`` and a conditional b), the two replicators, and the
    files of the client's older write and the proxy's newer one."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    stores = {a: store_a, b: ConditionalStore()}
    client, server = two_ledgers(tmp_path, stores)
    files = tmp_path / "older.bin", tmp_path / "newer.bin"
    files[0].write_bytes(older)
    files[1].write_bytes(newer)
    return (a, b), stores, (client, server), files


def put_while_down(rep: Replicator, region: str, src) -> None:
    """A put acknowledged by the other region while ``region`` is down: owed to ``region``."""
    rep.health.failed(region, seconds=60)
    rep.put_file(KEY, src)
    rep.health.reset()


def settle(rep: Replicator) -> None:
    for _ in range(3):
        for item in rep.outbox.items():
            if converge(rep, item) is Outcome.DONE:
                rep.outbox.done(item)
    assert rep.outbox.count() == 0, rep.outbox.items()


def held(stores) -> dict:
    return {name: s.objects.get(KEY, (None,))[0] for name, s in stores.items()}


def test_a_copy_landing_after_a_newer_delete_passed_its_region_is_taken_back(tmp_path):
    """The client's put is acknowledged by a (async) and owed to b. The proxy deletes the key
    (newer) in every region while the client's copy to b is on its way: the copy lands in b after
    the delete passed b. Before the markers, b kept the deleted key."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    stores = {a: TreeStore(), b: InterleavedStore()}
    client, server = two_ledgers(tmp_path, stores)
    src = tmp_path / "model.bin"
    src.write_bytes(b"the client's put")
    client.put_file(KEY, src)
    assert held(stores) == {a: src.read_bytes(), b: None}
    stores[b].before_put = lambda: server.delete_tree(KEY)
    settle(client)
    assert held(stores) == {a: None, b: None}
    settle(server)
    assert held(stores) == {a: None, b: None}


def test_a_delete_older_than_a_put_that_landed_first_does_not_remove_it(tmp_path):
    """The proxy's delete begins first (older); the client's put (newer) lands in a before the
    delete reaches a, and reaches b only after the delete passed b. Before the deletes were
    conditional, a lost the newer put and b kept it: the regions disagreed for ever."""
    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    src = tmp_path / "model.bin"
    src.write_bytes(b"the client's newer put")

    def client_put_lands_in_a_only():
        client.health.failed(b, seconds=60)  # b is owed it: its copy comes after the delete
        client.put_file(KEY, src)

    stores = {a: TreeStore(on_list=client_put_lands_in_a_only), b: TreeStore()}
    client, server = two_ledgers(tmp_path, stores)
    server.delete_tree(KEY)
    client.health.reset()
    settle(client)
    assert held(stores) == {a: src.read_bytes(), b: src.read_bytes()}
    settle(server)
    assert held(stores) == {a: src.read_bytes(), b: src.read_bytes()}


def test_a_converge_whose_write_an_older_copy_beat_looks_again(tmp_path):
    """Both ledgers owe region b the key (b was down): the client an older put, the server a newer
    one. Each looks at b, finds nothing, and writes If-None-Match; the client's older copy lands
    first, so the server's write is refused. Before, the server took the refusal for "converged"
    (its ledger's newest had not moved), dropped what it owed, and b kept the older bytes for ever
    (the chaos campaign's seed 1004, sync, in CI). Now a refused write is looked at again."""
    (a, b), stores, (client, server), (older, newer) = racing_writers(
        tmp_path, TreeStore(), b"the client's older put", b"the proxy's newer put"
    )
    put_while_down(client, b, older)
    put_while_down(server, b, newer)
    assert held(stores) == {a: newer.read_bytes(), b: None}
    stores[b].before_write = lambda: settle(client)  # the client's copy lands first
    settle(server)
    assert held(stores) == {a: newer.read_bytes(), b: newer.read_bytes()}


def test_an_older_put_landing_after_a_newer_one_does_not_overwrite_it(tmp_path):
    """Two sync writers with ledgers of their own put the key at once. The client's write is the
    older (its generation was taken first), but its upload reaches the regions after the proxy's
    newer one. Before, uploads were unconditional: the older bytes overwrote the newer in region a
    and stayed, while the proxy's ledger said a held its write (the chaos campaign's seed 10, sync).
    Now each upload is conditional on the copy looked at, and a newer copy is left alone."""
    (a, b), stores, (client, server), (older, newer) = racing_writers(
        tmp_path, ConditionalStore(), b"the client's older put", b"the proxy's newer put"
    )
    client.mode = "sync"
    stores[a].before_write = lambda: server.put_file(KEY, newer)  # lands first, everywhere
    client.put_file(KEY, older)
    assert held(stores) == {a: newer.read_bytes(), b: newer.read_bytes()}
    settle(client)
    settle(server)
    assert held(stores) == {a: newer.read_bytes(), b: newer.read_bytes()}


class LookedAtStore(TreeStore):
    """A region whose next look at ``KEY`` lets ``after_stat`` run (once) right after it answered."""

    after_stat = None

    def stat(self, key):
        got = super().stat(key)
        if key == KEY and self.after_stat:
            self.after_stat, hook = None, self.after_stat
            hook()
        return got


def test_a_delete_inferred_from_a_missing_put_does_not_take_back_a_newer_put(tmp_path):
    """The client owes b its put; the proxy deleted the key everywhere, so the client finds its
    put gone from a and records the delete instead of copying. Right after that look the proxy
    puts the key again (newer than its delete), owed to b. Before, the inferred delete took this
    clock's generation, newer than the proxy's put, and its marker in b took the put back when it
    reached b: an acknowledged put lost in b (the chaos campaign's seed 1003, async)."""
    (a, b), stores, (client, server), (older, newer) = racing_writers(
        tmp_path, LookedAtStore(), b"the client's put", b"the proxy's put after its delete"
    )
    put_while_down(client, b, older)
    server.delete_tree(KEY)
    stores[a].after_stat = lambda: put_while_down(server, b, newer)
    settle(client)
    settle(server)
    assert held(stores) == {a: newer.read_bytes(), b: newer.read_bytes()}


class CountedLooks(ConditionalStore):
    """A conditional region that counts the writer's looks at ``KEY`` (not its own condition checks)."""

    def __init__(self):
        super().__init__()
        self.looks, self._checking = 0, False

    def _condition(self, key, if_match, if_none_match) -> None:
        self._checking = True
        try:
            super()._condition(key, if_match, if_none_match)
        finally:
            self._checking = False

    def stat(self, key):
        self.looks += key == KEY and not self._checking
        return super().stat(key)


def test_a_small_put_is_sent_as_new_and_looks_only_when_refused(tmp_path):
    """A put of at most ASSUME_NEW_MAX bytes asks no region for its copy first (If-None-Match: *);
    over an existing copy it is refused, looked at once, and lands on that copy. A larger put
    looks first, as the refused upload would cost its whole body again."""
    from xregion.plugins.replication import ASSUME_NEW_MAX

    cfg = load_config(EMBEDDED_CONFIG)
    stores = {r.name: CountedLooks() for r in cfg.regions[:2]}
    rep = Replicator(cfg, tmp_path / "ledger.sqlite", mode="sync", region_stores=stores)
    rep.kick = lambda: None
    src = tmp_path / "f.bin"
    for body, looks in ((b"first", 0), (b"second", 1), (b"x" * (ASSUME_NEW_MAX + 1), 2)):
        src.write_bytes(body)
        rep.put_file(KEY, src)
        assert held(stores) == dict.fromkeys(stores, body)
        assert [s.looks for s in stores.values()] == [looks, looks], body[:10]
    assert rep.outbox.count() == 0


def _begin_then_hang(ledger: str, gens, stop) -> None:
    """A writer that took its generation and hangs before the end of its write (where a kill -9
    finds it); its upload is made to land by the test (regions in memory are not shared by fork)."""
    gens.put(Replicator(load_config(EMBEDDED_CONFIG), ledger, mode="sync").outbox.begin_write(KEY))
    stop.wait(60)


def test_a_write_whose_writer_was_killed_before_it_ended_is_taken_back(tmp_path):
    """Chaos seed 1001, sync: an MLflow server's put landed in region b, a was down, and the server
    was killed -9 before it recorded the end of the write. Nothing was owed, so b kept a write no
    region acknowledged and a had none, for good. A worker now owes every region the converge of a
    write no region acknowledged."""
    import multiprocessing
    import os
    import signal

    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    stores = {a: ConditionalStore(), b: ConditionalStore()}
    ledger = tmp_path / "ledger.sqlite"
    ctx = multiprocessing.get_context("spawn")  # never fork a process with threads (test_write_marks.SPAWN)
    gens, stop = ctx.Queue(), ctx.Event()
    writer = ctx.Process(target=_begin_then_hang, args=(str(ledger), gens, stop))
    writer.start()
    gen = gens.get(timeout=30)
    stores[b].put_bytes(KEY, b"never acknowledged", gen=gen)  # its upload landed in b only
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(30)
    worker = Replicator(cfg, ledger, mode="sync", region_stores=stores)
    worker.kick = lambda: None
    worker.drain_once()  # finds the dead writer's mark and owes every region its take-back
    settle(worker)
    # the write was never acknowledged: taken back everywhere or completed everywhere, but alike
    assert held(stores)[a] == held(stores)[b], held(stores)
    assert worker.outbox.abandoned_writes() == []


def test_a_write_of_another_host_is_taken_back_once_its_mark_expires(tmp_path):
    """The same write, by a writer on another host: this host cannot see that it is gone, so its
    mark held the key until it expired, and then nothing was owed either. Its mark, renewed every
    few seconds while the writer runs, now expires into the same take-back; until then it holds."""
    import time

    cfg = load_config(EMBEDDED_CONFIG)
    a, b = (r.name for r in cfg.regions[:2])
    stores = {a: ConditionalStore(), b: ConditionalStore()}
    ledger = tmp_path / "ledger.sqlite"
    elsewhere = Replicator(cfg, ledger, mode="sync", region_stores=stores).outbox
    elsewhere.writer = "another-host:4242:12.00"
    gen = elsewhere.begin_write(KEY)
    stores[b].put_bytes(KEY, b"never acknowledged", gen=gen)  # its upload landed in b only
    worker = Replicator(cfg, ledger, mode="sync", region_stores=stores)
    worker.kick = lambda: None
    assert worker.outbox.abandoned_writes() == []  # live as far as this host can tell: it holds
    worker.outbox._conn().execute("update writing set until = ?", (time.time() - 1,))  # not renewed
    worker.drain_once()
    settle(worker)
    assert held(stores)[a] == held(stores)[b], held(stores)
    assert worker.outbox.abandoned_writes() == []
