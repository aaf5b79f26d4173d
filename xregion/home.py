"""Where the embedded stack keeps state, logs and pid files (XREGION_HOME, default ./.xregion), and
where the replication ledger lives (``ledger_path``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def xregion_home() -> Path:
    return Path(os.environ.get("XREGION_HOME") or ".xregion").resolve()


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, and restore what was there before
    (a benchmark or campaign that runs its own scratch platform from inside one process)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ledger_path(cfg=None) -> Path:
    """Where the replication ledger lives: one file that every writer and replicator of a
    deployment shares, so owed work outlives the process that owed it.

    ``XREGION_LEDGER``, else the regions file's ``artifacts.ledger`` (relative to that file),
    else ``$XREGION_HOME/outbox.sqlite`` when XREGION_HOME is set, else the user's state
    directory (``$XDG_STATE_HOME/xregion``, default ``~/.local/state/xregion``): never whatever
    directory a client happens to run in.
    """
    if os.environ.get("XREGION_LEDGER"):
        return Path(os.environ["XREGION_LEDGER"]).expanduser().resolve()
    configured = getattr(getattr(cfg, "artifacts", None), "ledger", None)
    if configured:
        base = Path(cfg.source).parent if cfg.source else Path.cwd()
        return (base / Path(configured).expanduser()).resolve()
    if os.environ.get("XREGION_HOME"):
        return xregion_home() / "outbox.sqlite"
    return user_state_dir() / "outbox.sqlite"


def user_cache_dir() -> Path:
    """This user's xregion cache (what can be made again, only slower): ``$XDG_CACHE_HOME/xregion``,
    default ``~/.cache/xregion``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "xregion").resolve()


def user_state_dir() -> Path:
    """This user's xregion state outside any XREGION_HOME: ``$XDG_STATE_HOME/xregion``, default
    ``~/.local/state/xregion``."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return (state / "xregion").resolve()
