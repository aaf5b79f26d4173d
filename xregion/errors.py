"""The one base of every error this project raises on purpose: the CLI turns it into a message and an exit code."""

from __future__ import annotations


class XRegionError(Exception):
    """An error a user can act on: its message says what is wrong and what to do. Each concern
    derives its own (ConfigError, StoreError, RegistryError, DRError, SupervisorError, DrillError,
    ...); the plugins map them to MLflow error codes, the CLI to exit codes."""
