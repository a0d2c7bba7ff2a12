#!/usr/bin/env python3
"""PostgreSQL CPU by statement, while a seqbench run (or anything else) loads the server.

Usage: pg-cpu-by-statement.py [--port 10219] [--host /tmp/domain-testkit-pg-0/data]
                              [--seconds 20] [--interval 0.25]

Reads every postgres process's CPU time from /proc at the start and at the end of the
window, and samples pg_stat_activity (psql as user postgres) every --interval seconds in
between. Each backend's CPU is split over the statements it was seen running (state
active or idle in transaction) in proportion to the samples; a backend never seen
running is charged to its last statement, prefixed "idle:". Background processes are
charged to their backend_type. Prints % of one core per statement, highest first.

It is a sampler: a statement shorter than the interval is seen in proportion to how much
of the time it runs, which is what the split needs, but a backend that ran a statement
between samples only is charged to the one it was seen with. Keep --interval well below
the window. Start it after the phase's warm-up (seqbench prints when phase 2 starts).
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import time


def ticks():
    """CPU ticks (user + system) of every process named postgres."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        if "(postgres)" not in s:
            continue
        fields = s.rsplit(")", 1)[1].split()
        out[int(p)] = int(fields[11]) + int(fields[12])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", default="10219")
    ap.add_argument("--host", default="/tmp/domain-testkit-pg-0/data")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.25)
    a = ap.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    query = (
        "select pid, coalesce(state,''), coalesce(backend_type,''), coalesce(query,'') "
        "from pg_stat_activity where pid <> pg_backend_pid()"
    )
    t0, start = ticks(), time.time()
    seen = collections.defaultdict(collections.Counter)
    samples = 0
    while time.time() - start < a.seconds:
        r = subprocess.run(
            ["psql", "-h", a.host, "-p", a.port, "-U", "postgres", "-d", "postgres",
             "-AtF", "\x1f", "-c", query],
            capture_output=True, text=True, check=False)
        if r.returncode != 0:
            sys.exit(f"psql failed: {r.stderr.strip()}")
        for line in r.stdout.split("\n"):
            parts = line.split("\x1f")
            if len(parts) < 4 or not parts[0].isdigit():
                continue  # continuation lines of multi-line statements
            pid, state, kind, q = parts
            q = re.sub(r"\s+", " ", q)[:70]
            if kind != "client backend":
                key = kind
            elif state in ("active", "idle in transaction"):
                key = q
            else:
                key = "idle:" + q
            seen[int(pid)][key] += 1
        samples += 1
        time.sleep(a.interval)
    t1, elapsed = ticks(), time.time() - start
    by_statement = collections.Counter()
    for pid, c in seen.items():
        d = t1.get(pid, 0) - t0.get(pid, 0)
        if d <= 0:
            continue
        running = {k: v for k, v in c.items() if not k.startswith("idle:")} or c
        total = sum(running.values())
        for k, v in running.items():
            by_statement[k] += d * v / total
    unseen = sum(t1[p] - t0.get(p, 0) for p in t1 if p not in seen)
    pct = lambda t: 100.0 * t / hz / elapsed
    print(f"{samples} samples in {elapsed:.1f} s; PostgreSQL CPU, % of one core, by statement:")
    for k, v in by_statement.most_common(25):
        print(f"{pct(v):6.1f}%  {k}")
    print(f"{pct(unseen):6.1f}%  (processes not in pg_stat_activity: postmaster, exited backends)")
    print(f"{pct(sum(by_statement.values()) + unseen):6.1f}%  total")


if __name__ == "__main__":
    main()
