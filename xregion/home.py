"""Where the embedded stack keeps state, logs and pid files (XREGION_HOME, default ./.xregion)."""

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
