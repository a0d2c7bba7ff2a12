#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of every decoder reachable from a
# peer: runs each target of fuzz/ for SECONDS (default 60), then prints a summary line per
# target (executions, execs/s, coverage, crash or not). docs/fuzzing.md describes the targets.
#
# Usage: benches/scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 s, every target)
#
# Environment:
#   FUZZ_JOBS      parallel libFuzzer workers per target (default 1)
#   FUZZ_MERGE     1: afterwards, merge the inputs that add coverage into the committed
#                  corpus fuzz/corpus/<target>/ (minimizing merge; commit what it adds)
#   FUZZ_MAX_LEN   largest generated input in bytes (default 65536)
#   FUZZ_CODEGEN_UNITS  codegen units of the instrumented build (default 16)
#
# Inputs: fuzz/corpus/<target>/ (committed seeds and kept inputs, read only during a run).
# New inputs a run finds go to fuzz/work/<target>/ (ignored by git); crashes, timeouts and
# out-of-memory inputs to fuzz/artifacts/<target>/. Exit status 1 if any target crashed.
#
# Stable toolchain: cargo-fuzz's default AddressSanitizer needs nightly's -Zsanitizer, so the
# targets build with `--sanitizer none` (the code under test forbids `unsafe`; what fuzzing
# finds here are panics, overflows (debug assertions are on), hangs and unbounded memory).
# cargo-fuzz still passes unstable flags to rustc for the coverage instrumentation; the
# stable compiler accepts them only with RUSTC_BOOTSTRAP=1, which this script sets for the
# fuzz build alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_TARGET=${1:-60}
shift || true
JOBS=${FUZZ_JOBS:-1}
MAX_LEN=${FUZZ_MAX_LEN:-65536}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

export RUSTC_BOOTSTRAP=1
# cargo-fuzz's default profile: optimized, with debug assertions and overflow checks.
# Several codegen units: its default of one makes the first build take far longer on 2 cores.
BUILD=(--fuzz-dir fuzz --sanitizer none --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
FUZZ=(cargo fuzz run "${BUILD[@]}")
parallel=()
if ((JOBS > 1)); then
  parallel=(-jobs="$JOBS" -workers="$JOBS")
fi

echo "==> building ${#targets[@]} fuzz targets" >&2
cargo fuzz build "${BUILD[@]}" >&2

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
  log="fuzz/work/$t.log"
  echo "==> $t: ${SECONDS_PER_TARGET}s" >&2
  status=0
  # The first corpus folder receives new inputs; the committed one is only read.
  "${FUZZ[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 \
    "${parallel[@]}" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | awk '{s+=$1} END {print s+0}')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  if ((status != 0)); then
    failed+=("$t")
    summary+=("$(printf '%-20s %10s runs %8s/s  cov %-6s CRASH (exit %s): see %s and fuzz/artifacts/%s/' \
      "$t" "$runs" "$rate" "${cov:-?}" "$status" "$log" "$t")")
    grep -m1 -A12 -E 'panicked|ERROR: libFuzzer|deadly signal' "$log" >&2 || true
  else
    summary+=("$(printf '%-20s %10s runs %8s/s  cov %-6s ok' "$t" "$runs" "$rate" "${cov:-?}")")
  fi
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    # Adds to the committed corpus only the inputs that bring new coverage.
    "${FUZZ[@]}" "$t" "fuzz/corpus/$t" "fuzz/work/$t" -- -merge=1 -max_len="$MAX_LEN" \
      >"fuzz/work/$t.merge.log" 2>&1 || echo "warning: merging $t failed (fuzz/work/$t.merge.log)" >&2
  fi
done

printf '\n%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "crashed: ${failed[*]} (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --sanitizer none --codegen-units 16 <target> <artifact>)" >&2
  exit 1
fi
