#!/usr/bin/env python3
"""Writes the Grafana dashboards in this directory (maintainer tool; the JSON files are what
operators import and what CI checks with deploy/monitoring/check.py). Edit the panel lists
below, run `python3 deploy/monitoring/dashboards/generate.py`, then
`python3 deploy/monitoring/check.py --write` to refresh the ConfigMaps.

Every panel uses the `${DS_PROMETHEUS}` datasource input, and every query filters on
`$namespace` and `$domain` (`domain` is the optional --metrics-domain-label; "All" matches
series without it too).
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'namespace=~"$namespace", domain=~"$domain"'


def templating():
    def query_var(name, query, label):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
        }

    return {
        "list": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
            },
            query_var("namespace", 'label_values(domain_build_info, namespace)', "Namespace"),
            query_var("domain", 'label_values(domain_build_info{namespace=~"$namespace"}, domain)', "Domain"),
        ]
    }


def panel(title, description, exprs, kind="timeseries", unit=None, legend=None, w=12, h=8):
    targets = []
    for i, e in enumerate(exprs):
        expr, fmt = e if isinstance(e, tuple) else (e, None)
        t = {"datasource": DS, "expr": expr, "refId": chr(ord("A") + i)}
        if fmt:
            t["legendFormat"] = fmt
        if kind == "table":
            t["format"] = "table"
            t["instant"] = True
        targets.append(t)
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {},
    }
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    return p


def board(uid, title, description, panels):
    x = y = 0
    row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"].update({"x": x, "y": y})
        x += w
        row_h = max(row_h, h)
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["domain-runtime"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": templating(),
        "annotations": {"list": []},
        "panels": panels,
    }


def q99(metric, by=""):
    by = f", {by}" if by else ""
    return f"histogram_quantile(0.99, sum by (le{by}) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))"


def process_panels(job):
    sel = f'{SEL}, job="{job}"'
    return [
        panel("Resident memory", "process_resident_memory_bytes per process.",
              [(f"process_resident_memory_bytes{{{sel}}}", "{{instance}}")], unit="bytes", w=8),
        panel("CPU", "CPU seconds per second per process.",
              [(f"rate(process_cpu_seconds_total{{{sel}}}[$__rate_interval])", "{{instance}}")], unit="percentunit", w=8),
        panel("File descriptors", "Open file descriptors against the limit.",
              [(f"process_open_fds{{{sel}}}", "{{instance}} open"), (f"process_max_fds{{{sel}}}", "{{instance}} max")], w=8),
        panel("Running versions", "domain_build_info: which version and commit runs where; start time of each process.",
              [f"domain_build_info{{{sel}}}", f"process_start_time_seconds{{{sel}}} * 1000"], kind="table", w=24),
    ]


overview = board(
    "domain-overview", "Domain overview",
    "Health and role of every component, send rate, latency, watermark lag, pruning backlog, participants.",
    [
        panel("Scrape targets up", "Targets Prometheus scrapes successfully, per component (job).",
              [('sum by (job) (up{namespace=~"$namespace", job=~"sequencer|mediator|domain-manager|participant"})', "{{job}}")],
              kind="stat", w=6, h=5),
        panel("Sequencer writers online", "Sequencer processes whose writer is online; 0 means the domain cannot sequence.",
              [(f"sum by (namespace) (sequencer_writer_online{{{SEL}}})", "{{namespace}}")], kind="stat", w=6, h=5),
        panel("Active mediator per group", "1 when a replica of the mediator group holds the lease and is subscribed.",
              [(f"max by (namespace, member) (mediator_active{{{SEL}}})", "{{member}}")], kind="stat", w=6, h=5),
        panel("Domain manager lease held", "1 when a domain manager replica holds the lease (topology changes possible).",
              [(f'max by (namespace) (lease_active{{{SEL}, lease="domain-manager"}})', "{{namespace}}")], kind="stat", w=6, h=5),
        panel("Send rate by outcome", "Submissions answered by the sequencer writers, per second.",
              [(f"sum by (outcome) (rate(sequencer_sends_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}")], unit="reqps"),
        panel("Send and ping latency (p99)", "Durable send latency at the sequencer, and the participants' ping round trip (request to verdict).",
              [(q99("sequencer_send_latency_seconds"), "send p99"), (q99("participant_ping_rtt_seconds"), "ping rtt p99")], unit="s"),
        panel("Watermark lag per online instance", "Database clock minus the watermark of each online sequencer row; delivery waits for the slowest.",
              [(f"max by (sequencer_index) (sequencer_watermark_lag_seconds{{{SEL}}})", "index {{sequencer_index}}")], unit="s"),
        panel("Pruning backlog", "Age of the pruning lower bound beyond the configured retention (0 or below is healthy).",
              [(f"max by (namespace) (sequencer_pruning_lower_bound_age_seconds{{{SEL}}} - sequencer_pruning_retention_seconds{{{SEL}}})", "{{namespace}}")], unit="s"),
        panel("Participants", "Participants connected and subscribed (as they report it), and participants allowed by the topology.",
              [(f"sum(participant_connected{{{SEL}}})", "connected"), (f"max(dm_allowlist_size{{{SEL}}})", "allowed")]),
        panel("Firing-relevant errors", "Send rejections by code and verdict timeouts, per second.",
              [(f"sum by (code) (rate(sequencer_send_rejections_total{{{SEL}}}[$__rate_interval]))", "{{code}}"),
               (f'sum(rate(mediator_verdicts_total{{{SEL}, outcome="timed_out"}}[$__rate_interval]))', "verdict timeouts")], unit="reqps"),
        panel("Versions", "domain_build_info of every process.", [f"domain_build_info{{{SEL}}}"], kind="table", w=24),
    ],
)

sequencer = board(
    "domain-sequencer", "Sequencer", "Writers, latency, delivery, database pool and gRPC of the sequencer instances.",
    [
        panel("Writer online per process", "1 while the process's writer is online.",
              [(f"sequencer_writer_online{{{SEL}}}", "{{instance}}")], w=8),
        panel("Instances online (table)", "Rows marked online in seq_instances, as each process reads them.",
              [(f"sequencer_instances_online{{{SEL}}}", "{{instance}}")], w=8),
        panel("Instances marked offline", "Stalled peers marked offline, per second.",
              [(f"sum by (instance) (rate(sequencer_instances_marked_offline_total{{{SEL}}}[$__rate_interval]))", "{{instance}}")], w=8),
        panel("Sends by outcome", "Writer answers per second.",
              [(f"sum by (outcome) (rate(sequencer_sends_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}")], unit="reqps"),
        panel("Rejections by code", "Submissions refused before any write.",
              [(f"sum by (code) (rate(sequencer_send_rejections_total{{{SEL}}}[$__rate_interval]))", "{{code}}")], unit="reqps"),
        panel("Send and commit latency (p99)", "Queue to durable acknowledgement; one batch transaction.",
              [(q99("sequencer_send_latency_seconds", "instance"), "send {{instance}}"),
               (q99("sequencer_commit_seconds", "instance"), "commit {{instance}}")], unit="s"),
        panel("Batch size (p50)", "Events per group-commit transaction.",
              [(f"histogram_quantile(0.5, sum by (le) (rate(sequencer_batch_size_bucket{{{SEL}}}[$__rate_interval])))", "p50")]),
        panel("Watermark lag", "Per online instance row.",
              [(f"max by (sequencer_index) (sequencer_watermark_lag_seconds{{{SEL}}})", "index {{sequencer_index}}")], unit="s"),
        panel("Delivery", "Events read by the shared reader and delivered to subscribers, per second; open subscriptions.",
              [(f"sum by (instance) (rate(sequencer_events_delivered_total{{{SEL}}}[$__rate_interval]))", "delivered {{instance}}"),
               (f"sum by (instance) (rate(sequencer_events_read_total{{{SEL}}}[$__rate_interval]))", "read {{instance}}"),
               (f"sequencer_active_subscriptions{{{SEL}}}", "subscriptions {{instance}}")]),
        panel("Subscribers cut", "Subscriptions ended because the subscriber fell behind.",
              [(f"sum by (instance) (rate(sequencer_subscribers_cut_total{{{SEL}}}[$__rate_interval]))", "{{instance}}")]),
        panel("Database pool", "Hot-path connections in use against the capacity.",
              [(f'sequencer_db_pool_connections{{{SEL}, state="in_use"}}', "in use {{instance}}"),
               (f"sequencer_db_pool_max_connections{{{SEL}}}", "max {{instance}}")]),
        panel("Authentications", "Challenge/authenticate outcomes per second.",
              [(f"sum by (outcome) (rate(sequencer_authentications_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}")]),
        panel("Pruning", "Events pruned per second; bound age against retention.",
              [(f"sum(rate(sequencer_events_pruned_total{{{SEL}}}[$__rate_interval]))", "pruned/s"),
               (f"max(sequencer_pruning_lower_bound_age_seconds{{{SEL}}})", "bound age"),
               (f"max(sequencer_pruning_retention_seconds{{{SEL}}})", "retention")]),
        panel("Unary RPC latency (p99) by method", "grpc_server_handling_seconds covers unary calls only.",
              [(f'histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{{{SEL}, job="sequencer", grpc_type="unary"}}[$__rate_interval])))', "{{grpc_method}}")], unit="s"),
        panel("RPC errors by code", "Completed RPCs that did not end OK.",
              [(f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{SEL}, job="sequencer", grpc_code!="OK"}}[$__rate_interval]))', "{{grpc_method}} {{grpc_code}}")], unit="reqps"),
    ] + process_panels("sequencer"),
)

mediator = board(
    "domain-mediator", "Mediator", "Active replica, requests, verdicts and confirmations per mediator group (member).",
    [
        panel("Active replica", "mediator_active per replica (1 = holds the lease and is subscribed).",
              [(f"mediator_active{{{SEL}}}", "{{member}} {{instance}}")], w=8),
        panel("Pending requests (active)", "Requests waiting for a decision on the active replica.",
              [(f"mediator_pending_requests{{{SEL}}} and on (namespace, job, instance) (mediator_active{{{SEL}}} == 1)", "{{member}}")], w=8),
        panel("Lease takeovers and losses", "Per 15 min.",
              [(f'sum by (member) (increase(lease_takeovers_total{{{SEL}, lease="mediator"}}[15m]))', "takeovers {{member}}"),
               (f'sum by (member) (increase(lease_losses_total{{{SEL}, lease="mediator"}}[15m]))', "losses {{member}}")], w=8),
        panel("Verdicts by outcome", "Decided per second.",
              [(f"sum by (member, outcome) (rate(mediator_verdicts_total{{{SEL}}}[$__rate_interval]))", "{{member}} {{outcome}}")], unit="reqps"),
        panel("Decision latency (p99)", "Sequencer time from request to the deciding event, by outcome.",
              [(q99("mediator_decision_latency_seconds", "member, outcome"), "{{member}} {{outcome}}")], unit="s"),
        panel("Responses counted and ignored", "Confirmation responses per second; ignored by reason.",
              [(f"sum by (member) (rate(mediator_responses_total{{{SEL}}}[$__rate_interval]))", "counted {{member}}"),
               (f"sum by (member, reason) (rate(mediator_responses_ignored_total{{{SEL}}}[$__rate_interval]))", "ignored {{member}} {{reason}}")]),
        panel("Verdict sends", "Results of verdict send attempts.",
              [(f"sum by (member, result) (rate(mediator_verdict_sends_total{{{SEL}}}[$__rate_interval]))", "{{member}} {{result}}")]),
        panel("Time proofs", "Sent and failed per second.",
              [(f"sum by (member, result) (rate(mediator_time_proofs_total{{{SEL}}}[$__rate_interval]))", "{{member}} {{result}}")]),
        panel("Session failures", "Per 15 min, by reason.",
              [(f"sum by (member, reason) (increase(mediator_session_failures_total{{{SEL}}}[15m]))", "{{member}} {{reason}}")]),
        panel("Processing", "Events processed per second; persist latency p99.",
              [(f"sum by (member) (rate(mediator_events_processed_total{{{SEL}}}[$__rate_interval]))", "events {{member}}"),
               (q99("mediator_persist_seconds", "member"), "persist p99 {{member}}")]),
    ] + process_panels("mediator"),
)

domain_manager = board(
    "domain-manager", "Domain manager", "Lease, topology transactions and admin requests of the domain manager.",
    [
        panel("Lease held per replica", "lease_active{lease=\"domain-manager\"}.",
              [(f'lease_active{{{SEL}, lease="domain-manager"}}', "{{instance}}")], w=8),
        panel("Allowed participants", "Participants whose latest permission is not disabled.",
              [(f"max(dm_allowlist_size{{{SEL}}})", "allowed")], w=8),
        panel("Lease takeovers", "Per 15 min.",
              [(f'sum(increase(lease_takeovers_total{{{SEL}, lease="domain-manager"}}[15m]))', "takeovers")], w=8),
        panel("Topology transactions by kind", "Sequenced per second.",
              [(f"sum by (kind) (rate(dm_topology_transactions_total{{{SEL}}}[$__rate_interval]))", "{{kind}}")]),
        panel("Admin requests by outcome", "Per second; DM_SEQUENCER_UNAVAILABLE means topology stays pending.",
              [(f"sum by (method, outcome) (rate(dm_admin_requests_total{{{SEL}}}[$__rate_interval]))", "{{method}} {{outcome}}")]),
        panel("Topology send latency (p99)", "Time to get one transaction sequenced.",
              [(q99("dm_topology_send_seconds"), "p99")], unit="s"),
    ] + process_panels("domain-manager"),
)

participant = board(
    "domain-participant", "Participant and sequencer clients",
    "Connection, endpoints, pings and processing of participants, and the sequencer client of every member.",
    [
        panel("Connected", "participant_connected per participant.",
              [(f"participant_connected{{{SEL}}}", "{{instance}}")], w=8),
        panel("Healthy endpoints", "Sequencer endpoints passing their health check, per member.",
              [(f"sum by (job, instance) (sequencer_client_endpoint_healthy{{{SEL}}})", "{{job}} {{instance}}")], w=8),
        panel("Failovers and resubscriptions", "Per 15 min.",
              [(f"sum by (job, instance) (increase(sequencer_client_failovers_total{{{SEL}}}[15m]))", "failovers {{instance}}"),
               (f"sum by (job, instance) (increase(sequencer_client_resubscriptions_total{{{SEL}}}[15m]))", "resubscriptions {{instance}}")], w=8),
        panel("Pings by outcome", "Per second.",
              [(f"sum by (outcome) (rate(participant_pings_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}")]),
        panel("Ping round trip (p99)", "Request to verdict.",
              [(q99("participant_ping_rtt_seconds", "instance"), "{{instance}}")], unit="s"),
        panel("Client send latency (p99)", "One send including retries, per member.",
              [(q99("sequencer_client_send_seconds", "job, instance"), "{{job}} {{instance}}")], unit="s"),
        panel("Processing", "Events processed per second; pending requests.",
              [(f"sum by (instance) (rate(participant_events_processed_total{{{SEL}}}[$__rate_interval]))", "events {{instance}}"),
               (f"participant_pending_requests{{{SEL}}}", "pending {{instance}}")]),
        panel("Session failures", "Per 15 min, by reason.",
              [(f"sum by (instance, reason) (increase(participant_session_failures_total{{{SEL}}}[15m]))", "{{instance}} {{reason}}")]),
        panel("Certificates expiring", "Days until each loaded certificate expires.",
              [(f"(tls_certificate_expiry_timestamp_seconds{{{SEL}}} - time()) / 86400", "{{job}} {{role}} {{path}}")], w=24),
    ] + process_panels("participant"),
)

for name, b in [
    ("overview", overview),
    ("sequencer", sequencer),
    ("mediator", mediator),
    ("domain-manager", domain_manager),
    ("participant", participant),
]:
    with open(os.path.join(HERE, f"{name}.json"), "w") as f:
        json.dump(b, f, indent=2)
        f.write("\n")
