#!/usr/bin/env bash
# Samples pg_stat_activity of one database every 5 ms from a single session and
# prints where its backends spend their time (wait event, state, statement).
# Usage: pg_wait_sample.sh <database-url> [seconds]
# Run it while seqbench is in a phase, against the bench database it printed.
set -euo pipefail
url=${1:?database url}
secs=${2:-10}
iters=$((secs * 200))
psql -X -q "$url" <<SQL
CREATE TEMP TABLE w (i int, who text, wet text, we text, st text, q text);
DO \$\$
BEGIN
  FOR i IN 1..$iters LOOP
    PERFORM pg_stat_clear_snapshot();
    INSERT INTO w
      SELECT i, coalesce(nullif(application_name, ''), backend_type), wait_event_type, wait_event, state,
             regexp_replace(left(query, 48), '\s+', ' ', 'g')
      FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend';
    PERFORM pg_sleep(0.005);
  END LOOP;
END \$\$;
\echo '--- busy backends per sample (active, not waiting for the client) and total samples'
SELECT round(count(*) FILTER (WHERE st = 'active')::numeric / $iters, 2) AS avg_active_backends,
       round(count(*) FILTER (WHERE st = 'idle in transaction')::numeric / $iters, 2) AS avg_idle_in_txn
FROM w;
\echo '--- by state / wait event'
SELECT st, coalesce(wet || ':' || we, 'on CPU') AS wait, count(*) AS samples,
       round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS pct
FROM w WHERE st <> 'idle' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 20;
\echo '--- active statements'
SELECT q, coalesce(wet || ':' || we, 'on CPU') AS wait, count(*) AS samples
FROM w WHERE st = 'active' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 25;
\echo '--- idle in transaction: last statement'
SELECT q, count(*) AS samples FROM w WHERE st = 'idle in transaction' GROUP BY 1 ORDER BY 2 DESC LIMIT 10;
SQL
