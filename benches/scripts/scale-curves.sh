#!/usr/bin/env bash
# Scale curves of seqbench (issue 17): throughput against sequencer instances, database
# reads and RSS against subscribers per instance, and the broadcast cost against fanout.
# Runs phase 2 only (--skip-floor --skip-raw --skip-latency) once per point, keeps one JSON per point
# in OUTDIR, then prints one markdown table per curve from those files.
#
#   benches/scripts/scale-curves.sh [OUTDIR]        (default target/scale-curves-<UTC time>)
#
# Environment (all optional):
#   SEQBENCH      the seqbench binary (default target/release/seqbench; the sequencer binary
#                 must be next to it: cargo build --release -p domain-benches -p domain-sequencer)
#   DURATION      measured window per point (default 10s)
#   WARMUP        unmeasured load before it (default 2s)
#   POINTS        which points to run, space-separated curve:value words, e.g.
#                 "instances:3 subscribers:1000 fanout:100" (default: every point); a point
#                 whose JSON is already in OUTDIR is not run again unless RERUN=1
#   INSTANCES_FOR_CURVES  instances of the subscriber and fanout curves (default 2)
#   FANOUT_SUBSCRIBERS    verifying subscribers of every fanout point (default 100, so
#                 only the fanout changes along the curve; must be >= the largest fanout)
#   EXTRA_ARGS    more seqbench arguments for every point, e.g. "--senders 2"
#
# Curves (everything else is seqbench's default shape):
#   instances   --instances 1, 2, 3
#   subscribers 2, 100, 1000 subscribers per instance: 2 verifying subscribers per
#               instance (--subscribers 2*I) plus --idle-subscribers 0, 98, 998
#   fanout      --fanout 1, 10, 100 over FANOUT_SUBSCRIBERS verifying subscribers
set -euo pipefail

die() {
    echo "scale-curves: $*" >&2
    exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
seqbench="${SEQBENCH:-$root/target/release/seqbench}"
duration="${DURATION:-10s}"
warmup="${WARMUP:-2s}"
curve_instances="${INSTANCES_FOR_CURVES:-2}"
fanout_subscribers="${FANOUT_SUBSCRIBERS:-100}"
outdir="${1:-$root/target/scale-curves-$(date -u +%Y%m%dT%H%M%SZ)}"
read -r -a extra <<<"${EXTRA_ARGS:-}"

[[ -x "$seqbench" ]] || die "no seqbench binary at $seqbench; build it with: cargo build --release -p domain-benches -p domain-sequencer (or set SEQBENCH)"
[[ -x "$(dirname "$seqbench")/sequencer" || -n "${DOMAIN_BIN_DIR:-}" ]] ||
    die "no sequencer binary next to $seqbench; build it with: cargo build --release -p domain-sequencer (or set DOMAIN_BIN_DIR)"
command -v python3 >/dev/null || die "python3 is needed to print the tables"
[[ "$curve_instances" =~ ^[1-9][0-9]*$ ]] || die "INSTANCES_FOR_CURVES must be a positive integer, not '$curve_instances'"
[[ "$fanout_subscribers" =~ ^[1-9][0-9]*$ ]] || die "FANOUT_SUBSCRIBERS must be a positive integer, not '$fanout_subscribers'"

# Every point: "curve:value", in the order the tables print them.
all_points="instances:1 instances:2 instances:3 subscribers:2 subscribers:100 subscribers:1000 fanout:1 fanout:10 fanout:100"
points="${POINTS:-$all_points}"
for p in $points; do
    [[ " $all_points " == *" $p "* ]] || die "unknown point '$p' in POINTS; known: $all_points"
    if [[ "$p" == fanout:* ]] && ((fanout_subscribers < ${p#fanout:})); then
        die "point $p needs FANOUT_SUBSCRIBERS >= ${p#fanout:} (it is $fanout_subscribers)"
    fi
done

mkdir -p "$outdir"
echo "scale-curves: window $duration after $warmup warm-up per point; results in $outdir" >&2

# The seqbench arguments of one point.
point_args() {
    local curve="${1%%:*}" value="${1#*:}"
    case "$curve" in
    instances) echo "--instances $value" ;;
    subscribers)
        # 2 verifying subscribers per instance; the rest of each instance's count is idle.
        echo "--instances $curve_instances --subscribers $((2 * curve_instances)) --idle-subscribers $((value - 2))"
        ;;
    fanout) echo "--instances $curve_instances --subscribers $fanout_subscribers --fanout $value" ;;
    esac
}

for p in $points; do
    json="$outdir/${p/:/-}.json"
    if [[ -s "$json" && "${RERUN:-0}" != 1 ]]; then
        echo "scale-curves: $p: $json exists, not run again (RERUN=1 to redo)" >&2
        continue
    fi
    read -r -a args <<<"$(point_args "$p")"
    echo "scale-curves: $p: seqbench ${args[*]} ${extra[*]}" >&2
    log="$outdir/${p/:/-}.log"
    if ! "$seqbench" "${args[@]}" --skip-floor --skip-raw --skip-latency --duration "$duration" --warmup "$warmup" \
        "${extra[@]}" --json "$json.partial" >"$log" 2>&1; then
        rm -f "$json.partial"
        echo "scale-curves: $p FAILED; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    mv "$json.partial" "$json"
done

python3 - "$outdir" <<'PY'
import json, os, sys

outdir = sys.argv[1]

def load(point):
    path = os.path.join(outdir, point.replace(":", "-") + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)

def row(cells):
    print("| " + " | ".join(cells) + " |")

def table(title, header, points, cells):
    runs = [(p, load(p)) for p in points]
    runs = [(p, r) for p, r in runs if r is not None and r.get("throughput")]
    if not runs:
        return
    print(f"\n### {title}\n")
    row(header)
    row(["---:"] * len(header))
    for p, r in runs:
        row(cells(p, r))

def f0(x):
    return f"{x:,.0f}"

def f1(x):
    return f"{x:,.1f}"

def cpu(r, key="cpu_micros_per_event"):
    c = r["throughput"][key]
    return f"{c['sequencer']:.0f} / {c['postgres']:.0f} / {c['bench']:.0f}"

def scans(r, table):
    return f0(r["throughput"]["postgres"]["table_scans_per_sec"].get(table, 0.0))

table(
    "Throughput against sequencer instances (phase 2)",
    ["instances", "acked/s", "delivered/s", "p50 ms", "p99 ms", "seq CPU %", "pg CPU %",
     "idle %", "CPU us/event seq / pg / bench", "DB reads/s"],
    ["instances:1", "instances:2", "instances:3"],
    lambda p, r: [
        str(r["shape"]["instances"]),
        f0(r["throughput"]["acked_per_sec"]),
        f0(r["throughput"]["delivered_per_sec"]),
        f1(r["throughput"]["send_to_deliver"]["p50_ms"]),
        f1(r["throughput"]["send_to_deliver"]["p99_ms"]),
        f0(r["throughput"]["cpu"]["sequencer_pct"]),
        f0(r["throughput"]["cpu"]["postgres_pct"]),
        f0(r["throughput"]["cpu"]["machine_idle_pct"]),
        cpu(r),
        f0(r["throughput"]["postgres"]["reads_per_sec"]),
    ],
)

def subscribers(r):
    s = r["shape"]
    return s["subscribers"] // s["instances"] + s["idle_subscribers_per_instance"]

def rss_per_idle(r):
    idle = r.get("idle")
    if not idle:
        return "–"
    return f"{idle['rss_per_idle_subscriber_bytes'] / 1024:.1f}"

def rss_total(r):
    idle = r.get("idle")
    if not idle:
        return "–"
    return f"{sum(idle['rss_after_bytes']) / 1048576:.1f}"

table(
    "Subscribers per instance (2 verifying, the rest idle; phase 2; seq_* columns are that table's reads/s)",
    ["subscribers/instance", "acked/s", "DB reads/s", "seq_events", "seq_instances",
     "seq_checkpoints", "seq_recipients", "rows read/s", "seq CPU us/event",
     "sequencer RSS MiB (all instances)", "RSS KiB per idle subscriber"],
    ["subscribers:2", "subscribers:100", "subscribers:1000"],
    lambda p, r: [
        str(subscribers(r)),
        f0(r["throughput"]["acked_per_sec"]),
        f0(r["throughput"]["postgres"]["reads_per_sec"]),
        scans(r, "seq_events"),
        scans(r, "seq_instances"),
        scans(r, "seq_checkpoints"),
        scans(r, "seq_recipients"),
        f0(r["throughput"]["postgres"]["rows_read_per_sec"]),
        f0(r["throughput"]["cpu_micros_per_event"]["sequencer"]),
        rss_total(r),
        rss_per_idle(r),
    ],
)

table(
    "Fanout: broadcast cost per recipient (phase 2)",
    ["fanout", "subscribers", "acked/s", "deliveries/s", "p50 ms", "p99 ms",
     "CPU us/event seq / pg / bench", "CPU us/delivery seq / pg / bench", "DB reads/s"],
    ["fanout:1", "fanout:10", "fanout:100"],
    lambda p, r: [
        str(r["shape"]["fanout"]),
        str(r["shape"]["subscribers"]),
        f0(r["throughput"]["acked_per_sec"]),
        f0(r["throughput"]["delivered_per_sec"]),
        f1(r["throughput"]["send_to_deliver"]["p50_ms"]),
        f1(r["throughput"]["send_to_deliver"]["p99_ms"]),
        cpu(r),
        cpu(r, "cpu_micros_per_delivery"),
        f0(r["throughput"]["postgres"]["reads_per_sec"]),
    ],
)
PY
