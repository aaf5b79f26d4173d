"""Secrets of the embedded platform: generated once, kept in XREGION_HOME/secrets, mode 0600.

A secret never goes into argv, a pid file, a log line or the event log: a process that needs one
gets the file's path (or the value in its environment), and reads it itself.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path


def secrets_dir(home: Path) -> Path:
    d = Path(home) / "secrets"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def secret_path(home: Path, name: str) -> Path:
    return secrets_dir(home) / name


def secret(home: Path, name: str, *, nbytes: int = 24) -> str:
    """The secret ``name``; generated (URL-safe) and written 0600 the first time it is asked for."""
    path = secret_path(home, name)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = _random.token_urlsafe(nbytes)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:  # two processes racing: the first link wins and both read the winner
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
