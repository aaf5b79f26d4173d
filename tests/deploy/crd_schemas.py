"""Minimal JSON schemas of the custom resources the Kubernetes deployment uses.

kubernetes-validate ships schemas for the core API only. These cover exactly the fields our
manifests use, with their types and required keys, and refuse unknown keys where we write them,
so a typo or a wrong type fails here rather than at `kubectl apply`. They follow the operators'
CRDs: CloudNativePG `postgresql.cnpg.io/v1` Cluster, MinIO operator `minio.min.io/v2` Tenant and
the Multi-Cluster Services API `multicluster.x-k8s.io/v1alpha1` ServiceExport.
"""

from __future__ import annotations

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T)?$"}
_SECRET_KEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {"name": _NAME, "key": {"type": "string"}},
}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}


def _resource(api_version: str, kind: str, spec: dict | None) -> dict:
    props = {
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": _NAME, "namespace": _NAME, "labels": _LABELS, "annotations": _LABELS},
        },
    }
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        props["spec"] = spec
        required.append("spec")
    return {"type": "object", "additionalProperties": False, "required": required, "properties": props}


CNPG_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["instances", "storage", "bootstrap"],
        "properties": {
            "instances": {"type": "integer", "minimum": 1},
            "imageName": {"type": "string"},
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "minSyncReplicas": {"type": "integer", "minimum": 0},
            "maxSyncReplicas": {"type": "integer", "minimum": 0},
            "storage": {
                "type": "object",
                "additionalProperties": False,
                "required": ["size"],
                "properties": {"size": _QUANTITY, "storageClass": {"type": "string"}},
            },
            "postgresql": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"parameters": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
            "bootstrap": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "initdb": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["database", "owner"],
                        "properties": {
                            "database": {"type": "string"},
                            "owner": {"type": "string"},
                            "secret": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {"name": _NAME},
                            },
                            "postInitSQL": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "pg_basebackup": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["source"],
                        "properties": {"source": {"type": "string"}},
                    },
                },
            },
            "replica": {
                "type": "object",
                "additionalProperties": False,
                "required": ["source"],
                "properties": {
                    "enabled": {"type": "boolean"},
                    "source": {"type": "string"},
                    "primary": {"type": "string"},
                },
            },
            "externalClusters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "connectionParameters"],
                    "properties": {
                        "name": {"type": "string"},
                        "connectionParameters": {"type": "object", "additionalProperties": {"type": "string"}},
                        "sslKey": _SECRET_KEY,
                        "sslCert": _SECRET_KEY,
                        "sslRootCert": _SECRET_KEY,
                        "password": _SECRET_KEY,
                    },
                },
            },
        },
    },
)

MINIO_TENANT = _resource(
    "minio.min.io/v2",
    "Tenant",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["pools"],
        "properties": {
            "image": {"type": "string"},
            "configuration": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": _NAME},
            },
            "requestAutoCert": {"type": "boolean"},
            "pools": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["servers", "volumesPerServer", "volumeClaimTemplate"],
                    "properties": {
                        "name": {"type": "string"},
                        "servers": {"type": "integer", "minimum": 1},
                        "volumesPerServer": {"type": "integer", "minimum": 1},
                        "volumeClaimTemplate": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "metadata": {"type": "object"},
                                "spec": {
                                    "type": "object",
                                    "required": ["accessModes", "resources"],
                                    "properties": {
                                        "accessModes": {"type": "array", "items": {"type": "string"}},
                                        "resources": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "buckets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "region": {"type": "string"},
                        "objectLock": {"type": "boolean"},
                    },
                },
            },
        },
    },
)

SERVICE_EXPORT = _resource("multicluster.x-k8s.io/v1alpha1", "ServiceExport", None)

CRD_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
    ("minio.min.io/v2", "Tenant"): MINIO_TENANT,
    ("multicluster.x-k8s.io/v1alpha1", "ServiceExport"): SERVICE_EXPORT,
}
