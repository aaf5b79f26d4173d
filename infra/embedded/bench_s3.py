"""What keeping objects on disk costs: the persistent embedded S3 endpoint against plain moto.

Both servers run as real processes on free loopback ports; the same boto3 workload (small PUTs,
small GETs, 8 MiB PUTs through s3transfer) runs against each with a few client threads.
Figures, not a test: ``xregion bench s3 --json``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from xregion.net import free_port

from .supervisor import Service, Supervisor

BIN = Path(sys.executable).parent


@dataclass
class StoreFigures:
    store: str
    small_put_per_s: float
    small_get_per_s: float
    large_put_mib_per_s: float
    restart_keeps_objects: bool


def _service(name: str, port: int, data: Path | None) -> Service:
    if data is None:
        argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    else:
        argv = [str(BIN / "python"), "-m", "xregion.infra.embedded.s3server", "-p", str(port), "--data", str(data)]
    return Service(
        name=name,
        region="bench",
        component="s3",
        argv=argv,
        listen=("127.0.0.1", port),
        health={"type": "http", "url": f"http://127.0.0.1:{port}/moto-api/"},
        start_timeout=60,
    )


def _client(port: int):
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def _rate(n: int, fn, threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range(n)))
    return n / (time.perf_counter() - t0)


def _measure(name: str, port: int, tmp: Path, small: int, large: int, threads: int) -> dict:
    s3 = _client(port)
    s3.create_bucket(Bucket="bench")
    body = os.urandom(4096)
    puts = _rate(small, lambda i: s3.put_object(Bucket="bench", Key=f"small/{i}", Body=body), threads)
    gets = _rate(small, lambda i: s3.get_object(Bucket="bench", Key=f"small/{i}")["Body"].read(), threads)
    big = tmp / "large.bin"
    big.write_bytes(os.urandom(8 << 20))
    mib = _rate(large, lambda i: s3.upload_file(str(big), "bench", f"large/{i}"), min(threads, 2)) * 8
    return {"store": name, "small_put_per_s": puts, "small_get_per_s": gets, "large_put_mib_per_s": mib}


def run_bench(small: int = 400, large: int = 12, threads: int = 8, progress=None) -> list[StoreFigures]:
    """Measure plain moto and the persistent store; restart each and check what it kept."""
    tmp = Path(tempfile.mkdtemp(prefix="xregion-bench-s3-"))
    sup = Supervisor(tmp / "home")
    out = []
    try:
        for name, data in (("moto (memory)", None), ("xregion s3server (disk, fsync)", tmp / "data")):
            svc = _service(name.split()[0] + "-bench", free_port(), data)
            sup.start(svc)
            if progress:
                progress(f"measuring {name}")
            figures = _measure(name, svc.listen[1], tmp, small, large, threads)
            sup.fault("kill", [svc])
            sup.stop(svc.name)
            sup.start(svc)
            try:
                kept = _client(svc.listen[1]).list_objects_v2(Bucket="bench", Prefix="small/", MaxKeys=1000)
            except ClientError:  # NoSuchBucket: the store came back empty
                kept = {}
            figures["restart_keeps_objects"] = kept.get("KeyCount", 0) == small
            sup.stop(svc.name)
            out.append(StoreFigures(**figures))
    finally:
        sup.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def as_json(figures: list[StoreFigures]) -> list[dict]:
    return [{k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(f).items()} for f in figures]
