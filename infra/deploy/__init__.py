"""Deployment generators: compose and Kubernetes files rendered from the regions file."""
