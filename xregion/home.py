"""Where the embedded stack keeps state, logs and pid files (XREGION_HOME, default ./.xregion)."""

from __future__ import annotations

import os
from pathlib import Path


def xregion_home() -> Path:
    return Path(os.environ.get("XREGION_HOME") or ".xregion").resolve()
