#!/usr/bin/env python3
"""Consistency checks of the monitoring kit, run by .ci/run (exit 1 on any problem):

1. metric names: every `pub const NAME: &str = "<metric>"` in crates/*/src/metrics.rs and
   crates/domain-runtime/src/scrape.rs is listed in docs/metrics.md and vice versa;
2. alerts: every alert has `summary`, `description` and a `runbook_url` whose anchor is a
   heading of docs/runbook.md, names only metrics documented in docs/metrics.md, and has a
   promtool fixture in tests/ where it fires and one where it does not;
3. dashboards: every deploy/monitoring/dashboards/*.json parses, uses the `${DS_PROMETHEUS}`
   datasource, and its PromQL names only documented metrics (the expressions are parsed by
   promtool separately: `check.py --dashboard-rules FILE` writes them as a rule file);
4. generated Kubernetes objects: deploy/k8s/base/monitoring/prometheus-rules.yaml and
   dashboards.yaml equal what this script generates from the rule files and dashboards
   (`check.py --write` regenerates them).
"""
import glob
import json
import os
import re
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MON = os.path.join(ROOT, "deploy", "monitoring")
K8S = os.path.join(ROOT, "deploy", "k8s", "base", "monitoring")
RUNBOOK_BASE = os.environ.get("RUNBOOK_BASE", "")
problems = []


def rel(path):
    return os.path.relpath(path, ROOT)


# Metric names the lead's pruning work exports; referenced by SequencerPruningStalled and
# documented in docs/metrics.md by that change.
def code_metrics():
    names = set()
    files = glob.glob(os.path.join(ROOT, "crates", "*", "src", "metrics.rs"))
    files.append(os.path.join(ROOT, "crates", "domain-runtime", "src", "scrape.rs"))
    for path in files:
        for const, value in re.findall(r'pub const (\w+): &str = "([^"]+)";', open(path).read()):
            if const.endswith("_LABEL"):
                continue
            names.add(value)
    return names


def doc_metrics():
    text = open(os.path.join(ROOT, "docs", "metrics.md")).read()
    names = set(re.findall(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|", text, re.M))
    # Metrics mentioned in prose, e.g. "The sequencer also exports `x{kind}`".
    for line in re.findall(r"^.*\balso exports\b.*$", text, re.M):
        names |= set(re.findall(r"`([a-z_][a-z0-9_]*)[{`]", line))
    return names


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "absent", "absent_over_time", "histogram_quantile", "time", "vector", "scalar",
    "abs", "ceil", "floor", "round", "clamp_min", "clamp_max", "label_replace", "label_join",
    "changes", "resets", "max_over_time", "min_over_time", "avg_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "timestamp", "sort", "sort_desc", "inf", "nan",
    "le", "e",
}


def promql_metrics(expr):
    """Metric names in a PromQL expression (heuristic, good enough for our own files)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\$\{?\w+\}?", "1", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    s = re.sub(r"\boffset\s+\w+", "", s)
    names = set()
    for token in re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if token in PROMQL_WORDS:
            continue
        names.add(re.sub(r"_(bucket|sum|count)$", "", token) if token.endswith(("_bucket", "_sum", "_count")) else token)
    return names


EXTERNAL = {"up"}  # target health, from Prometheus itself


def known(name, documented):
    if name in documented or name in EXTERNAL:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base in documented


def runbook_anchors():
    text = open(os.path.join(ROOT, "docs", "runbook.md")).read()
    return {h.strip().lower() for h in re.findall(r"^#{2,4}\s+(.+)$", text, re.M)}


def rule_files():
    return sorted(glob.glob(os.path.join(MON, "*-rules.yaml")))


def check_alerts(documented):
    anchors = runbook_anchors()
    fires, silent = set(), set()
    for path in glob.glob(os.path.join(MON, "tests", "*.test.yaml")):
        for test in yaml.safe_load(open(path)).get("tests", []):
            for t in test.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    for path in rule_files():
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert")
                if not name:
                    continue
                where = f"{rel(path)}: {name}"
                ann = rule.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    if not ann.get(key):
                        problems.append(f"{where}: no {key}")
                url = ann.get("runbook_url", "")
                if url != f"docs/runbook.md#{name.lower()}":
                    problems.append(f"{where}: runbook_url should be docs/runbook.md#{name.lower()}")
                if name.lower() not in anchors:
                    problems.append(f"{where}: docs/runbook.md has no section '### {name}'")
                for metric in promql_metrics(rule["expr"]):
                    if not known(metric, documented):
                        problems.append(f"{where}: metric {metric} is not in docs/metrics.md")
                if name not in fires:
                    problems.append(f"{where}: no promtool fixture where it fires")
                if name not in silent:
                    problems.append(f"{where}: no promtool fixture where it stays silent")


def dashboards():
    return sorted(glob.glob(os.path.join(MON, "dashboards", "*.json")))


def dashboard_exprs(board):
    for panel in board.get("panels", []):
        for inner in [panel] + panel.get("panels", []):
            for target in inner.get("targets", []):
                if target.get("expr"):
                    yield inner.get("title", "?"), target["expr"]
    for var in board.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and isinstance(q, str):
            m = re.match(r"label_values\((.*),\s*\w+\)$", q)
            if m:
                yield f"variable {var.get('name')}", m.group(1)


def grafana_to_promql(expr):
    """Grafana-only syntax replaced by values promtool accepts."""
    expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
    expr = re.sub(r'=~\s*"\$\w+"', '=~".*"', expr)
    expr = re.sub(r'=\s*"\$\w+"', '=~".*"', expr)
    return expr


def check_dashboards(documented):
    for path in dashboards():
        try:
            board = json.load(open(path))
        except ValueError as e:
            problems.append(f"{rel(path)}: not valid JSON: {e}")
            continue
        text = open(path).read()
        if '"${DS_PROMETHEUS}"' not in text and '"uid": "${DS_PROMETHEUS}"' not in text:
            problems.append(f"{rel(path)}: panels must use the ${{DS_PROMETHEUS}} datasource")
        names = {v.get("name") for v in board.get("templating", {}).get("list", [])}
        for var in ("namespace", "domain"):
            if var not in names:
                problems.append(f"{rel(path)}: no ${var} variable")
        count = 0
        for title, expr in dashboard_exprs(board):
            count += 1
            for metric in promql_metrics(expr):
                if not known(metric, documented):
                    problems.append(f"{rel(path)}: panel '{title}': metric {metric} is not in docs/metrics.md")
        if count == 0:
            problems.append(f"{rel(path)}: no PromQL expressions")


def dashboard_rules(out_path):
    """Every dashboard expression as a recording rule, for `promtool check rules`."""
    rules = []
    for path in dashboards():
        board = json.load(open(path))
        for i, (_, expr) in enumerate(dashboard_exprs(board)):
            stem = re.sub(r"\W", "_", os.path.basename(path)[:-5])
            rules.append({"record": f"dashboard:{stem}:{i}", "expr": grafana_to_promql(expr)})
    with open(out_path, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f, sort_keys=False)


HEADER = "# GENERATED by deploy/monitoring/check.py --write from {src}; do not edit (CI checks equality).\n"


def generated_prometheus_rules():
    docs = []
    for path in rule_files():
        text = open(path).read()
        if RUNBOOK_BASE:
            text = text.replace('"docs/runbook.md#', f'"{RUNBOOK_BASE}#')
        spec = yaml.safe_load(text)
        name = os.path.basename(path)[: -len(".yaml")]
        docs.append({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": f"domain-{name}", "labels": {"app.kubernetes.io/part-of": "domain-runtime"}},
            "spec": spec,
        })
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, width=1000) for d in docs)
    return HEADER.format(src="deploy/monitoring/*-rules.yaml") + body


def generated_dashboards():
    docs = []
    for path in dashboards():
        name = os.path.basename(path)
        docs.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "domain-dashboard-" + name[: -len(".json")],
                # The Grafana sidecar (grafana helm chart, kube-prometheus-stack) loads every
                # ConfigMap with this label.
                "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "domain-runtime"},
            },
            "data": {name: open(path).read()},
        })
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, width=1000) for d in docs)
    return HEADER.format(src="deploy/monitoring/dashboards/*.json") + body


def check_generated(write):
    for fname, content in (
        ("prometheus-rules.yaml", generated_prometheus_rules()),
        ("dashboards.yaml", generated_dashboards()),
    ):
        path = os.path.join(K8S, fname)
        if write:
            with open(path, "w") as f:
                f.write(content)
            continue
        current = open(path).read() if os.path.exists(path) else None
        if current != content:
            problems.append(f"{rel(path)} differs from its sources: run deploy/monitoring/check.py --write")
        # The wrapped rules must equal the rule files themselves, not just the generator output.
        if fname == "prometheus-rules.yaml" and current is not None and not RUNBOOK_BASE:
            wrapped = [d["spec"] for d in yaml.safe_load_all(current) if d]
            sources = [yaml.safe_load(open(p)) for p in rule_files()]
            if wrapped != sources:
                problems.append(f"{rel(path)}: PrometheusRule specs differ from the rule files")


def main():
    args = sys.argv[1:]
    if args[:1] == ["--dashboard-rules"]:
        dashboard_rules(args[1])
        return 0
    documented = doc_metrics()
    in_code = code_metrics()
    for name in sorted(in_code - documented):
        problems.append(f"metric {name} is exported by the code but not listed in docs/metrics.md")
    for name in sorted(documented - in_code):
        problems.append(f"docs/metrics.md lists {name}, which no metrics.rs or scrape.rs defines")
    check_alerts(documented)
    check_dashboards(documented)
    check_generated(write=args[:1] == ["--write"])
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(in_code)} metrics documented, {len(rule_files())} rule files, {len(dashboards())} dashboards")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
