"""`xregion bench replication`: one artifact set, five ways, side by side in one run.

(a) plain boto3 to the primary region; (b) xregion sync to every region; (c) xregion async
(client-observed, then until fully replicated); (d) the naive baseline: plain boto3 to each
region one after the other; (e) plain boto3 to every region in parallel, the physical limit of a
sync write. Throughputs are compared as ratios (sync to (e), async to (a)), measured in the same
run and interleaved over rounds, because absolute times drift on a shared machine: each way runs
on emptied stores, and in five rounds each takes each place in the order once. The result is a
plain dict (``--json``); the CLI (xregion/cli/replicate.py) renders it as a table.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xregion.config import ConfigError, load_config
from xregion.errors import XRegionError
from xregion.store import RegionStore, s3_client

from .replication import Replicator

SIZES_KIB = [1, 4, 64, 256, 1024, 4096, 16384, 65536]
WAYS = ["a_plain_boto3", "b_xregion_sync", "c_xregion_async", "d_sequential_regions", "e_parallel_plain"]


def make_set(root: Path, max_mib: int) -> list[Path]:
    files = []
    for kib in [s for s in SIZES_KIB if s <= max_mib * 1024]:
        p = root / f"obj-{kib}k.bin"
        with open(p, "wb") as f:
            left = kib * 1024
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        files.append(p)
    return files


class BenchError(XRegionError, RuntimeError):
    """The benchmark cannot run (no stack); the message is one line saying what to do."""


def _plain_client(store: RegionStore):
    """A boto3 client with boto3's defaults (the reference every figure is compared with)."""
    key, secret = store.region.s3.credentials(store.name)
    return s3_client(
        endpoint_url=store.region.s3.endpoint_url,
        region_name=store.region.s3.region_name,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def _plain(client, bucket: str, files, prefix) -> None:
    for p in files:
        client.upload_file(str(p), bucket, f"{prefix}/{p.name}")  # boto3's default transfer config


def _parallel(plain: dict, files, prefix) -> None:
    with ThreadPoolExecutor(len(plain)) as pool:
        list(pool.map(lambda item: _plain(item[1][0], item[1][1], files, prefix), plain.items()))


def _stores_or_fail() -> tuple:
    try:
        cfg = load_config()
        stores = {r.name: RegionStore(r) for r in cfg.write_order()}
    except ConfigError as err:
        raise BenchError(f"{err}") from None
    down = [f"{n} ({s.region.s3.endpoint_url})" for n, s in stores.items() if not s.healthy()]
    if down:
        raise BenchError(f"no S3 store answers in region(s) {', '.join(down)}: start the stack with `xregion up`")
    return cfg, stores


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _async(cfg, stores, files, prefix: str, ledger: Path, times: dict, lags: list, full: list) -> None:
    """(c): the client's time, then the time until every region holds the set, and each object's lag."""
    rep = Replicator(cfg, ledger, mode="async", region_stores=stores)
    t0 = time.perf_counter()
    for p in files:
        rep.put_file(f"{prefix}/{p.name}", p)
    times["c_xregion_async"].append(time.perf_counter() - t0)
    done = rep.wait_drained(timeout=300)
    full.append(time.perf_counter() - t0)
    lags += rep.lag_samples
    rep.close()
    if not done.drained:
        raise BenchError(f"async set not fully replicated within 300 s ({done.remaining} still owed)")


def _round(cfg, stores, plain, files, tmp: Path, rnd: int, times: dict, lags: list, full: list) -> list[str]:
    """Every way once. Each starts on the same stores: the one before it was deleted first (a store
    that holds more is slower: with a fixed order and one delete per round, async always ran last,
    beside four copies of the set, and measured 0.75-0.85 of plain boto3 instead of about 1). The
    order turns by one each round, so that no way is always first or last."""
    run = f"xregion-bench/{time.time_ns()}"
    primary = cfg.primary.name
    sync = Replicator(cfg, tmp / f"sync-{rnd}.sqlite", mode="sync", region_stores=stores)
    uploads = {  # the timed part of each way but async, which times itself (foreground, then lag)
        "a_plain_boto3": lambda prefix: _plain(*plain[primary], files, prefix),
        "b_xregion_sync": lambda prefix: [sync.put_file(f"{prefix}/{p.name}", p) for p in files],
        "d_sequential_regions": lambda prefix: [_plain(*c, files, prefix) for c in plain.values()],
        "e_parallel_plain": lambda prefix: _parallel(plain, files, prefix),
    }
    turn = rnd % len(WAYS)
    order = WAYS[turn:] + WAYS[:turn]
    try:
        for name in order:
            prefix = f"{run}/{name}"
            if name == "c_xregion_async":
                _async(cfg, stores, files, prefix, tmp / f"async-{rnd}.sqlite", times, lags, full)
            else:
                times[name].append(_timed(uploads[name], prefix))
            for s in stores.values():
                s.delete_prefix(prefix + "/")
    finally:
        sync.close()
    return order


def run_bench(max_mib: int = 64, rounds: int = 5, progress=print) -> dict:
    cfg, stores = _stores_or_fail()
    plain = {n: (_plain_client(s), s.bucket) for n, s in stores.items()}
    times: dict[str, list[float]] = {k: [] for k in WAYS}
    lags: list[float] = []
    full: list[float] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="xregion-bench-") as tmp:
        files = make_set(Path(tmp), max_mib)
        total = sum(p.stat().st_size for p in files)
        progress(f"artifact set: {len(files)} files, {total / 2**20:.1f} MiB; {rounds} rounds")
        orders = []
        for rnd in range(rounds):
            orders.append(_round(cfg, stores, plain, files, Path(tmp), rnd, times, lags, full))
            progress(f"round {rnd + 1}: " + ", ".join(f"{k[:1]} {v[-1]:.2f}s" for k, v in times.items()))
    best = {k: statistics.median(v) for k, v in times.items()}
    mibs = {k: total / 2**20 / v for k, v in best.items()}
    base = mibs["a_plain_boto3"]
    return {
        "artifact_set": {
            "files": len(files),
            "bytes": total,
            "sizes_kib": [s for s in SIZES_KIB if s <= max_mib * 1024],
        },
        "regions": list(stores),
        "rounds": rounds,
        "order_by_round": orders,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "throughput_mib_s": {k: round(v, 1) for k, v in mibs.items()},
        "ratios": {
            "b_over_a": round(mibs["b_xregion_sync"] / base, 3),
            "c_over_a": round(mibs["c_xregion_async"] / base, 3),
            "d_over_a": round(mibs["d_sequential_regions"] / base, 3),
            "e_over_a": round(mibs["e_parallel_plain"] / base, 3),
            "sync_over_e": round(mibs["b_xregion_sync"] / mibs["e_parallel_plain"], 3),
            "async_over_a": round(mibs["c_xregion_async"] / base, 3),
        },
        "async_foreground_mib_s": round(mibs["c_xregion_async"], 1),
        "async_lag_s": {"p50": round(pct(lags, 50), 3), "p99": round(pct(lags, 99), 3), "samples": len(lags)},
        "async_fully_replicated_s": round(statistics.median(full), 3),
        "targets": {"sync_over_e": ">= 0.9", "async_over_a": ">= 0.8", "async_lag_p99_s": "<= 2"},
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # how noisy the machine was
    }
