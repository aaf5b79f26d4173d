"""The platform: the embedded runtime (embedded/), the serving control plane (serving/) and the deploy generators (deploy/)."""
