"""What a person sees: our progress and results on the terminal; everyone else's chatter in a log.

Library code logs (``logging``); third-party libraries log and warn too (MLflow's schema and
type-hint hints, the stage deprecation, TensorFlow's and absl's C++ start-up lines). A command
sends all of that to ``XREGION_HOME/logs/<command>.log``; ``--verbose`` shows it on the terminal
as well.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# TensorFlow's C++ logging: errors only (oneDNN notices, NodeDef attribute warnings, ...)
QUIET_NATIVE = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "2"}
# MLflow, when first imported, gives its loggers a handler of its own on stderr (and stops them
# propagating): a step that imports it after log_to_file put its INFO lines back on the terminal.
# Supervised servers do not inherit this (infra/embedded/service.py, COMMAND_ONLY).
QUIET_MLFLOW = {"MLFLOW_CONFIGURE_LOGGING": "false"}


def log_to_file(home: Path, command: str, verbose: bool = False) -> Path:
    """Route every logger and every warning to the command's log file (and the terminal with
    ``verbose``); returns the log's path."""
    path = Path(home) / "logs" / f"{command}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(path)]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    else:
        for k, v in {**QUIET_NATIVE, **QUIET_MLFLOW}.items():
            os.environ.setdefault(k, v)
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.captureWarnings(True)  # MLflow's hints and deprecations become log records
    warnings.simplefilter("default")
    for name in ("mlflow", "alembic", "urllib3", "botocore", "absl", "tensorflow"):
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = [], True  # MLflow installs its own stderr handler
    return path


@contextmanager
def native_output_to(log: Path, verbose: bool = False) -> Iterator[None]:
    """During a step that loads TensorFlow, what C++ code writes straight to file descriptor 2
    (absl's "All log messages before absl::InitializeLog()", oneDNN notices) goes to ``log``."""
    if verbose:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
