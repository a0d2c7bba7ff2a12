#!/usr/bin/env bash
# Pruning soak: a full devnet (2 sequencers, 2 domain managers, 2 mediators, 2 participants)
# under steady pings with short pruning settings. Once a minute it prints the sequencer
# database's table sizes (rows and bytes) and every service process's RSS; at the end it
# compares the second half of the run with the first and exits 1 if storage or memory kept
# growing: the largest value of the second half above SOAK_GROWTH (default 1.5) times the
# largest of the first half. Peaks, not single samples: the stored rows swing with the ping
# rate and with autovacuum, a level does not.
#
# Usage: benches/scripts/pruning-soak.sh [MINUTES]      (default 30)
#
# Environment:
#   SOAK_PROFILE     debug | release (default release; the binaries are built first)
#   SOAK_PINGERS     ping loops besides devnet's own (default 4)
#   SOAK_RETENTION   sequencer pruning.retention (default 60s)
#   SOAK_INTERVAL    sequencer pruning.interval (default 10s)
#   SOAK_SAMPLE      seconds between samples (default 60)
#   SOAK_GROWTH      largest accepted last/middle ratio (default 1.5)
#   SOAK_DIR         run directory (default: a fresh one under /tmp)
#   DATABASE_URL     optional: devnet uses this server instead of its own
#
# Output: a table per sample on stdout, the raw samples in $SOAK_DIR/soak.tsv.
set -euo pipefail
cd "$(dirname "$0")/../.."

MINUTES=${1:-30}
PROFILE=${SOAK_PROFILE:-release}
PINGERS=${SOAK_PINGERS:-4}
RETENTION=${SOAK_RETENTION:-60s}
INTERVAL=${SOAK_INTERVAL:-10s}
SAMPLE=${SOAK_SAMPLE:-60}
GROWTH=${SOAK_GROWTH:-1.5}
DIR=${SOAK_DIR:-$(mktemp -d /tmp/pruning-soak.XXXXXX)}
PG_BIN=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
PSQL=$(command -v psql || echo "$PG_BIN/psql")

case "$PROFILE" in
  release) cargo build --release --workspace --bins >&2; BIN=target/release ;;
  debug) cargo build --workspace --bins >&2; BIN=target/debug ;;
  *) echo "SOAK_PROFILE must be debug or release" >&2; exit 2 ;;
esac

# Short pruning settings for every component (the services read <PREFIX>__<KEY> from the
# environment, and devnet passes its environment on).
export SEQUENCER__PRUNING__INTERVAL=$INTERVAL
export SEQUENCER__PRUNING__RETENTION=$RETENTION
export MEDIATOR__ACKNOWLEDGE_INTERVAL=2s
export PARTICIPANT__ACKNOWLEDGE_INTERVAL=2s

mkdir -p "$DIR"
# devnet runs PostgreSQL as the postgres user when root: it must traverse the run directory.
chmod 755 "$DIR"
RUN="$DIR/devnet"
OUT="$DIR/devnet.out"
# Generous: sampling itself takes time, and devnet must outlive the last sample.
TOTAL=$((MINUTES * 70 + 120))
"$BIN/devnet" --dir "$RUN" --duration "${TOTAL}s" --ping-interval 100ms --no-build >"$OUT" 2>&1 &
DEVNET=$!
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill -INT "$DEVNET" 2>/dev/null || true
  wait "$DEVNET" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 180); do
  grep -q " is up" "$OUT" 2>/dev/null && break
  kill -0 "$DEVNET" 2>/dev/null || { cat "$OUT" >&2; echo "devnet exited" >&2; exit 1; }
  sleep 1
done
grep -q " is up" "$OUT" || { tail -50 "$OUT" >&2; echo "devnet did not come up" >&2; exit 1; }

# The sequencer database and the participants' admin endpoints, from devnet's configs.
SEQ_CONFIG=$(ls "$RUN"/config/sequencer*.toml | head -1)
SEQ_DB=$(sed -n 's/^url *= *"\(.*\)"/\1/p' "$SEQ_CONFIG" | head -1)
admin_of() { sed -n '/^\[admin-api\]/,/^\[/s/^listen *= *"\(.*\)"/\1/p' "$RUN/config/$1.toml" | head -1; }
id_of() { "$BIN/participant" id --data-dir "$RUN/$1" | tail -1; }
P1_ADMIN="http://$(admin_of participant1)"
P2_ADMIN="http://$(admin_of participant2)"
P1_ID=$(id_of participant1)
P2_ID=$(id_of participant2)
case "$P1_ID" in PAR::*) ;; *) P1_ID="PAR::$P1_ID" ;; esac
case "$P2_ID" in PAR::*) ;; *) P2_ID="PAR::$P2_ID" ;; esac

ping_loop() { # admin target
  while kill -0 "$DEVNET" 2>/dev/null; do
    "$BIN/participant" ping "$2" --admin-endpoint "$1" --timeout 10s >/dev/null 2>&1 || sleep 0.2
  done
}
for i in $(seq 1 "$PINGERS"); do
  if ((i % 2)); then ping_loop "$P1_ADMIN" "$P2_ID" & else ping_loop "$P2_ADMIN" "$P1_ID" & fi
  pids+=($!)
done

TABLES="seq_events seq_recipients seq_checkpoints seq_dedup seq_nonces seq_tokens seq_topology"
sql_rows() {
  local q="" t
  for t in $TABLES; do q="$q SELECT '$t', count(*), pg_total_relation_size('$t') FROM $t UNION ALL"; done
  "$PSQL" -X -At -F ' ' "$SEQ_DB" -c "${q% UNION ALL}"
}
rss_of() { # name of a devnet child, summed over its processes
  ps -o rss=,args= --ppid "$DEVNET" | awk -v n="$1" '$0 ~ "/"n" " {s+=$1} END {print s+0}'
}
SERVICES="sequencer domain-manager mediator participant"

TSV="$DIR/soak.tsv"
printf 'minute' >"$TSV"
for t in $TABLES; do printf '\t%s_rows\t%s_bytes' "$t" "$t" >>"$TSV"; done
for s in $SERVICES; do printf '\t%s_rss_kib' "$s" >>"$TSV"; done
printf '\n' >>"$TSV"

echo "soak: $MINUTES min, $PINGERS extra ping loops, retention $RETENTION, interval $INTERVAL, $PROFILE build, run dir $DIR"
start=$(date +%s)
n=0
while ((n * SAMPLE < MINUTES * 60)); do
  sleep "$SAMPLE"
  n=$((n + 1))
  kill -0 "$DEVNET" 2>/dev/null || { tail -30 "$OUT" >&2; echo "devnet died" >&2; exit 1; }
  row=$(awk -v m="$(( ($(date +%s) - start) / 60 ))" 'BEGIN{printf "%d", m}')
  while read -r t rows bytes; do row="$row	$rows	$bytes"; done < <(sql_rows)
  for s in $SERVICES; do row="$row	$(rss_of "$s")"; done
  echo "$row" >>"$TSV"
  column -t -s $'\t' "$TSV" | tail -1 | sed 's/^/  /'
done

echo
echo "samples ($TSV):"
column -t -s $'\t' "$TSV"
pings=$(grep -c approved "$RUN/logs/pings.log" 2>/dev/null || echo 0)
echo "devnet pings approved: $pings (plus $PINGERS extra loops)"

# Levelled off: the second half's peak is at most GROWTH x the first half's, per column.
python3 - "$TSV" "$GROWTH" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
head, data = rows[0], [list(map(float, r)) for r in rows[1:]]
limit = float(sys.argv[2])
if len(data) < 4:
    print("too few samples to judge growth"); sys.exit(1)
first, second = data[: len(data) // 2], data[len(data) // 2 :]
bad = []
for i, name in enumerate(head[1:], start=1):
    a, b = max(r[i] for r in first), max(r[i] for r in second)
    # Tiny tables say nothing about growth.
    if name.endswith("_rows") and max(a, b) < 1000: continue
    if name.endswith("_bytes") and max(a, b) < 4 * 1024 * 1024: continue
    if a > 0 and b / a > limit:
        bad.append(f"{name}: peak {a:.0f} -> {b:.0f}")
    else:
        print(f"  {name}: first-half peak {a:.0f}, second-half peak {b:.0f}")
if bad:
    print("still growing:", "; ".join(bad)); sys.exit(1)
print(f"levelled off: every column's second-half peak is within {limit}x of the first half's")
EOF
