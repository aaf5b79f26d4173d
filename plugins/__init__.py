"""MLflow plugins loaded through entry points: the xregion:// artifact repository and the gated registry store."""
