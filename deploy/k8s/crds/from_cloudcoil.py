#!/usr/bin/env python3
"""Regenerates the cert-manager and Prometheus-operator schemas in this directory.

The pydantic models of PyPI `cloudcoil-models-cert-manager` and
`cloudcoil-models-prometheus-operator` are generated from the upstream CRDs; their JSON
schema (by alias, i.e. the Kubernetes field names) is made strict: every object with
declared properties gets `additionalProperties: false`, as the API server's strict field
validation would reject an unknown field. Run in a throwaway venv:
  python3 -m venv /tmp/cc && /tmp/cc/bin/pip install cloudcoil-models-cert-manager \
      cloudcoil-models-prometheus-operator && /tmp/cc/bin/python from_cloudcoil.py
"""

import importlib.metadata as md
import json
from pathlib import Path

from cloudcoil.models.cert_manager import v1 as cm
from cloudcoil.models.prometheus_operator import v1 as po

OUT = Path(__file__).resolve().parent
MODELS = (
    ("cert-manager.io", "v1", "cloudcoil-models-cert-manager", (cm.Certificate, cm.Issuer)),
    ("monitoring.coreos.com", "v1", "cloudcoil-models-prometheus-operator", (po.PodMonitor, po.PrometheusRule)),
)


def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)


for group, version, package, models in MODELS:
    for model in models:
        schema = model.model_json_schema(by_alias=True)
        strict(schema)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"{group}/{version} {model.__name__}: generated from the pydantic models of PyPI {package} {md.version(package)} (which are generated from the upstream CRDs) by model_json_schema(by_alias=True); every object with declared properties made additionalProperties: false, like the API server's strict field validation. Regenerate with deploy/k8s/crds/README.md.",
            **schema,
        }
        path = OUT / f"{group}_{model.__name__.lower()}_{version}.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path.name}")
