"""`xregion bench replication`: one artifact set, four ways, side by side in one run.

(a) plain boto3 to the primary region; (b) xregion sync to every region; (c) xregion async
(client-observed, then until fully replicated); (d) the naive baseline: plain boto3 to each
region one after the other. Throughputs are compared as ratios to (a), measured in the same run
and interleaved over rounds, because absolute times drift on a shared machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from xregion.config import load_config
from xregion.store import RegionStore

from .replication import Replicator

SIZES_KIB = [1, 4, 64, 256, 1024, 4096, 16384, 65536]


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


def _plain(store: RegionStore, files, prefix) -> None:
    client = store.client
    for p in files:
        client.upload_file(str(p), store.bucket, f"{prefix}/{p.name}")  # boto3's default transfer config


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run_bench(max_mib: int = 64, rounds: int = 4, progress=print) -> dict:
    cfg = load_config()
    stores = {r.name: RegionStore(r) for r in cfg.write_order()}
    primary = stores[cfg.primary.name]
    times: dict[str, list[float]] = {
        "a_plain_boto3": [],
        "b_xregion_sync": [],
        "c_xregion_async": [],
        "d_sequential_regions": [],
    }
    lags: list[float] = []
    full: list[float] = []
    with tempfile.TemporaryDirectory(prefix="xregion-bench-") as tmp:
        files = make_set(Path(tmp), max_mib)
        total = sum(p.stat().st_size for p in files)
        progress(f"artifact set: {len(files)} files, {total / 2**20:.1f} MiB; {rounds} rounds")
        for rnd in range(rounds):
            run = f"xregion-bench/{time.time_ns()}"
            times["a_plain_boto3"].append(_timed(lambda: _plain(primary, files, f"{run}/a")))
            times["d_sequential_regions"].append(
                _timed(lambda: [_plain(s, files, f"{run}/d") for s in stores.values()])
            )
            sync = Replicator(cfg, Path(tmp) / f"sync-{rnd}.sqlite", mode="sync")
            times["b_xregion_sync"].append(_timed(lambda: [sync.put_file(f"{run}/b/{p.name}", p) for p in files]))
            sync.close()
            rep = Replicator(cfg, Path(tmp) / f"async-{rnd}.sqlite", mode="async")
            t0 = time.perf_counter()
            for p in files:
                rep.put_file(f"{run}/c/{p.name}", p)
            times["c_xregion_async"].append(time.perf_counter() - t0)
            done = rep.wait_replicated(timeout=300)
            full.append(time.perf_counter() - t0)
            lags += rep.lag_samples
            rep.close()
            if not done:
                raise RuntimeError("async set not fully replicated within 300 s")
            progress(f"round {rnd + 1}: " + ", ".join(f"{k[:1]} {v[-1]:.2f}s" for k, v in times.items()))
            for s in stores.values():
                s.delete_prefix(run + "/")
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
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "throughput_mib_s": {k: round(v, 1) for k, v in mibs.items()},
        "ratios": {
            "b_over_a": round(mibs["b_xregion_sync"] / base, 3),
            "c_over_a": round(mibs["c_xregion_async"] / base, 3),
            "d_over_a": round(mibs["d_sequential_regions"] / base, 3),
        },
        "async_lag_s": {"p50": round(pct(lags, 50), 3), "p99": round(pct(lags, 99), 3), "samples": len(lags)},
        "async_fully_replicated_s": round(statistics.median(full), 3),
        "targets": {"c_over_a": ">= 0.9", "b_over_a": ">= 0.7 and above d_over_a", "async_lag_p99_s": "<= 2"},
    }


def render(result: dict, console) -> None:
    from rich.table import Table

    t = Table(
        "method",
        "seconds",
        "MiB/s",
        "ratio to (a)",
        title=f"replication benchmark: {result['artifact_set']['files']} files, "
        f"{result['artifact_set']['bytes'] / 2**20:.1f} MiB, regions {', '.join(result['regions'])}",
    )
    ratio = {
        "a_plain_boto3": 1.0,
        "b_xregion_sync": result["ratios"]["b_over_a"],
        "c_xregion_async": result["ratios"]["c_over_a"],
        "d_sequential_regions": result["ratios"]["d_over_a"],
    }
    for k, s in result["seconds"].items():
        t.add_row(k, f"{s:.2f}", f"{result['throughput_mib_s'][k]:.1f}", f"{ratio[k]:.2f}")
    console.print(t)
    lag = result["async_lag_s"]
    console.print(
        f"async lag p50 {lag['p50']}s, p99 {lag['p99']}s ({lag['samples']} objects); "
        f"async set fully replicated after {result['async_fully_replicated_s']}s"
    )
