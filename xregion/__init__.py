"""mlflow-xregion core: the regions config, the region-store client, the event log and artifact URIs."""
