"""How Patroni is run: the command line and environment of the launcher, for the service's user.

As a normal user Patroni runs from the project's own virtualenv. As root it must run as the
postgres user (Postgres refuses root, and Patroni runs Postgres as its own child), and that user
may not be able to read the virtualenv at all: a clone in a 0700 directory, an interpreter under
/root. So as root a private, world-readable copy of Patroni and its dependencies (the exact files
pip installed, listed by their distributions' RECORD) is made once per Patroni and Python version
under ``/var/lib/xregion/runtime/``, and run with an interpreter of the same Python version that
the postgres user can execute (the virtualenv's base, else the system's ``pythonX.Y``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .postgres import ROOT_DATA, pg_user_kwargs, run_as_postgres
from .supervisor import SupervisorError

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("patroni_launcher.py")
# what Patroni imports at run time: itself with the etcd3 extra, and a Postgres driver
ROOTS = [("patroni", {"etcd3"}), ("psycopg2-binary", set()), ("psycopg2", set())]


def _closure() -> list[metadata.Distribution]:
    """Patroni's installed distributions and, transitively, what they require (extras honoured)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(ROOTS)
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional driver that is not installed (psycopg2 vs psycopg2-binary)
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((req.name, set(req.extras)))
    return list(seen.values())


def runtime_dir() -> Path:
    version = metadata.version("patroni")
    return ROOT_DATA / "runtime" / f"patroni-{version}-py{sys.version_info[0]}{sys.version_info[1]}"


def _stamp(dists: list[metadata.Distribution]) -> str:
    text = ",".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in dists))
    return hashlib.sha256((text + LAUNCHER.read_text()).encode()).hexdigest()


def install() -> Path:
    """The private copy of Patroni for the postgres user (made once; remade when versions change)."""
    dists = _closure()
    rt = runtime_dir()
    stamp = _stamp(dists)
    if (rt / "STAMP").exists() and (rt / "STAMP").read_text() == stamp:
        return rt
    tmp = rt.with_name(f"{rt.name}.tmp-{os.getpid()}")  # two `xregion up` at once each build their own
    shutil.rmtree(tmp, ignore_errors=True)
    site = tmp / "site"
    site.mkdir(parents=True)
    for dist in dists:
        base = Path(dist.locate_file(""))
        for f in dist.files or []:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue  # console scripts live outside site-packages; byte code is rebuilt
            src, dst = base / f, site / f
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    shutil.copy2(LAUNCHER, tmp / "xregion_patroni_launcher.py")
    for d, _, files in os.walk(tmp):
        os.chmod(d, 0o755)
        for name in files:
            os.chmod(os.path.join(d, name), 0o644)
    (tmp / "STAMP").write_text(stamp)
    os.chmod(tmp / "STAMP", 0o644)
    rt.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(ROOT_DATA, 0o755)
    os.chmod(rt.parent, 0o755)
    shutil.rmtree(rt, ignore_errors=True)
    try:
        tmp.rename(rt)
    except OSError:  # another process installed the same runtime meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Patroni runtime for the postgres user installed in %s (%d distributions)", rt, len(dists))
    return rt


def _python_for_postgres() -> str:
    """An interpreter of our Python version that the postgres user can run."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    base = getattr(sys, "_base_executable", sys.executable)
    candidates = [os.path.realpath(base), f"/usr/bin/python{want}", f"/usr/local/bin/python{want}"]
    for py in dict.fromkeys(candidates):
        if not os.path.exists(py):
            continue
        try:
            probe = subprocess.run(
                [py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                **pg_user_kwargs(),
            )
        except OSError:  # the postgres user may not even reach it (an interpreter under /root)
            continue
        if probe.returncode == 0 and probe.stdout.strip() == want:
            return py
    raise SupervisorError(
        f"no Python {want} interpreter the postgres user can run (tried {', '.join(dict.fromkeys(candidates))}); "
        f"install Debian's python{want} (apt-get install python{want}) or run the stack as a normal user"
    )


@functools.cache
def command() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(argv without the config path, extra environment) that start the launcher as the service user.
    Cached per process: ``xregion status`` builds every service record and must stay quick."""
    if not run_as_postgres():
        return (sys.executable, "-s", str(LAUNCHER)), ()
    rt = install()
    chosen = rt / "PYTHON"
    python = chosen.read_text().strip() if chosen.exists() else ""
    if not python or not os.path.exists(python):
        python = _python_for_postgres()
        chosen.write_text(python + "\n")
        os.chmod(chosen, 0o644)
    return (python, "-s", str(rt / "xregion_patroni_launcher.py")), (("PYTHONPATH", str(rt / "site")),)
