#!/usr/bin/env python3
"""Maintainer helper, not run by CI: fills `exp_annotations` of a promtool fixture from what
promtool renders, for alerts whose labels already match. Review the diff before committing:
the firing/not-firing expectations and labels stay hand-written; only the templated text is
copied.

    python3 deploy/monitoring/tests/golden.py deploy/monitoring/tests/sequencer-rules.test.yaml
"""
import re
import subprocess
import sys

import yaml

path = sys.argv[1]
out = subprocess.run(["promtool", "test", "rules", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
pair = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
got = {}  # (test name, alertname, time) -> list of (labels, annotations)
for block in re.split(r"\n\s*\n", out):
    m = re.search(r"name: (.*),\s*alertname: (\S+), time: (\S+),", block, re.S)
    if not m:
        continue
    part = block.split("got:")[-1]
    items = []
    for labels, annotations in re.findall(r"Labels:\{(.*)\}\n\s*Annotations:\{(.*)\}", part):
        lab = {k: v for k, v in pair.findall(labels) if k != "alertname"}
        ann = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in pair.findall(annotations)}
        items.append((lab, ann))
    got[(m.group(1).strip(), m.group(2), m.group(3))] = items

def dur(s):
    return s if isinstance(s, str) else str(s)

doc = yaml.safe_load(open(path))
for test in doc["tests"]:
    for t in test.get("alert_rule_test", []):
        for key, items in got.items():
            name, alert, time = key
            if name != test.get("name") or alert != t["alertname"]:
                continue
            for exp in t.get("exp_alerts") or []:
                for lab, ann in items:
                    if {k: str(v) for k, v in exp["exp_labels"].items()} == lab:
                        exp["exp_annotations"] = ann
with open(path, "w") as f:
    f.write("# promtool test rules fixtures (run by .ci/run); exp_annotations filled by golden.py and reviewed.\n")
    yaml.safe_dump(doc, f, sort_keys=False, width=200, allow_unicode=True)
