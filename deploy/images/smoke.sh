#!/usr/bin/env bash
# Smoke test of the images built by deploy/images/build.sh, run with podman:
#   1. every image's entrypoint prints `<component> <version>` for --version, and every
#      binary in /usr/local/bin of one image runs; the bootstrap Job's key and id steps
#      produce the ids the components print;
#   2. the sequencer image, as uid 65532 with its key made by the image itself, serves
#      (/health/ready, which also drives gRPC health SERVING) against a PostgreSQL with
#      `ssl = on`, connected with sslmode=verify-full and logged in by client certificate
#      as deploy/k8s configures it (pg_hba `cert`, a role without password), and every
#      one of its database sessions is encrypted and certificate-authenticated;
#   3. the same with a CA that did not sign the server certificate fails at start, naming
#      database.sslrootcert.
#
#   deploy/images/smoke.sh --registry R --tag T
#
# Needs podman and runc, openssl, curl and the PostgreSQL 15 server binaries (PG_BIN_DIR,
# default /usr/lib/postgresql/15/bin). Uses host networking and four consecutive free ports,
# the first of them SMOKE_PORT_BASE when set, else the first free block from 24100 up.
# Starts its own throwaway PostgreSQL and stops it again.
set -euo pipefail
cd "$(dirname "$0")/../.."

REGISTRY=registry.invalid/domain-runtime
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
while (($#)); do
  case $1 in
    --registry) REGISTRY=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    *) echo "smoke.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
COMPONENTS=(sequencer mediator domain-manager domainctl participant)
TOOLS=(domain-bootstrap)
PG_BIN=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
# Below the kernel's ephemeral range (32768-60999 here): a fixed 56100 was taken once by an
# outgoing connection of the tests that ran before, and PostgreSQL could not bind it.
free_port_block() {
  python3 - "$1" <<'PY'
import socket, sys
start = int(sys.argv[1])
for base in range(start, start + 4000, 10):
    socks = []
    try:
        for port in range(base, base + 4):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no block of 4 free ports from %d" % start)
PY
}
BASE=${SMOKE_PORT_BASE:-$(free_port_block 24100)}
PG_PORT=$BASE PUBLIC=$((BASE + 1)) ADMIN=$((BASE + 2)) OPS=$((BASE + 3))

work=$(mktemp -d /tmp/domain-image-smoke.XXXXXX)
chmod 755 "$work"
# The sandbox has no crun and refuses podman's default ulimits; no systemd either.
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
export CONTAINERS_CONF=$work/containers.conf
PODMAN=(podman --storage-driver vfs --runtime runc --cgroup-manager=cgroupfs)
RUN=("${PODMAN[@]}" run --rm --pull=never --network host -v "$work/mnt:/smoke")

cleanup() {
  "${PODMAN[@]}" rm -f smoke-sequencer >/dev/null 2>&1 || true
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke.sh: FAILED: $*" >&2; exit 1; }

# --- 1. versions --------------------------------------------------------------------
mkdir -p "$work/mnt"
for c in "${COMPONENTS[@]}"; do
  out=$("${RUN[@]}" "$REGISTRY/$c:$TAG" --version) || fail "$c --version exited non-zero"
  [ "$out" = "$c $VERSION" ] || fail "$REGISTRY/$c:$TAG --version printed '$out', expected '$c $VERSION'"
  echo "ok: $REGISTRY/$c:$TAG --version -> $out"
done
for c in "${COMPONENTS[@]}" "${TOOLS[@]}"; do
  "${RUN[@]}" --entrypoint "/usr/local/bin/$c" "$REGISTRY/sequencer:$TAG" --version >/dev/null \
    || fail "/usr/local/bin/$c does not run in the sequencer image"
done
uid=$("${RUN[@]}" --entrypoint /usr/local/bin/domainctl "$REGISTRY/sequencer:$TAG" --version >/dev/null &&
  "${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$REGISTRY/sequencer:$TAG")
[ "$uid" = "65532:65532" ] || fail "sequencer image user is '$uid'"
echo "ok: all $((${#COMPONENTS[@]} + ${#TOOLS[@]})) binaries run in one image; user $uid"

# --- 1b. the bootstrap Job's steps (deploy/k8s/base/bootstrap-job.yaml), as uid 65532 ---
# with a read-only root: keys from the components' own commands, then domain-bootstrap
# writes the ids as files, byte for byte what the components print.
boot=$work/mnt/boot
mkdir -p "$boot" && chown 65532:65532 "$boot"
RO=("${RUN[@]}" --read-only)
printed=$("${RO[@]}" "$REGISTRY/domain-manager:$TAG" init --key-file /smoke/boot/namespace.pem --domain-name smoke-boot)
fp=$("${RO[@]}" "$REGISTRY/mediator:$TAG" generate-key /smoke/boot/mediator.pem)
"${RO[@]}" --entrypoint /usr/local/bin/domain-bootstrap "$REGISTRY/domain-manager:$TAG" \
  --namespace-key=/smoke/boot/namespace.pem --domain-name=smoke-boot \
  --mediator-key=/smoke/boot/mediator.pem --mediator-name=mediator --out=/smoke/boot/identity >/dev/null \
  || fail "domain-bootstrap failed in the domain-manager image"
[ "$(cat "$boot/identity/domain-id")" = "$printed" ] && [ "$(wc -l <"$boot/identity/domain-id")" = 0 ] \
  || fail "identity/domain-id is '$(cat "$boot/identity/domain-id")', domain-manager init printed '$printed'"
[ "$(cat "$boot/identity/mediator-id")" = "MED::mediator::$fp" ] \
  || fail "identity/mediator-id is '$(cat "$boot/identity/mediator-id")', expected MED::mediator::$fp"
[ "$(cat "$boot/identity/domain-name")" = smoke-boot ] || fail "identity/domain-name"
echo "ok: bootstrap steps in the images: domain-id $printed, mediator-id MED::mediator::$fp"

# --- 2. PostgreSQL with TLS, certificates from a throwaway CA -----------------------
tls=$work/mnt/tls
mkdir -p "$tls"
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=smoke ca" -keyout "$tls/ca.key" -out "$tls/ca.pem"
openssl_quiet req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=other ca" -keyout "$tls/other-ca.key" -out "$tls/other-ca.pem"
openssl_quiet req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$tls/server.key" -out "$tls/server.csr"
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$tls/ext"
openssl_quiet x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
  -CAcreateserial -days 2 -extfile "$tls/ext" -out "$tls/server.pem"
# The sequencer's PostgreSQL login: CN = the role, as cert-manager issues it in deploy/k8s.
openssl_quiet req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=sequencer" \
  -keyout "$tls/pg-client.key" -out "$tls/pg-client.csr"
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >"$tls/client-ext"
openssl_quiet x509 -req -in "$tls/pg-client.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
  -CAcreateserial -days 2 -extfile "$tls/client-ext" -out "$tls/pg-client.pem"
# deploy/k8s/postgres's rules: the role only with its certificate over TLS, into its own
# database; postgres (the smoke test's own setup) by trust.
cat >"$work/pg_hba.conf" <<'HBA'
local all all trust
hostssl sameuser sequencer 127.0.0.1/32 cert
hostnossl all sequencer 127.0.0.1/32 reject
host all postgres 127.0.0.1/32 trust
HBA
install -o postgres -m 0644 "$tls/ca.pem" "$work/pg-client-ca.pem"
chown postgres "$work/pg_hba.conf"
# The server's copy of its key must be private to postgres; the sequencer's (same
# certificate, for its public API) readable by uid 65532.
install -o postgres -m 0600 "$tls/server.key" "$work/pg-server.key"
install -o postgres -m 0644 "$tls/server.pem" "$work/pg-server.pem"
chmod 0644 "$tls"/*

mkdir -p "$work/pg" "$work/pgrun" && chown postgres "$work/pg" "$work/pgrun"
runuser -u postgres -- "$PG_BIN/initdb" -D "$work/pg" -U postgres --auth=trust -N >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$work/pg" -l "$work/pgrun/log" -w -o \
  "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$work/pgrun -c ssl=on -c ssl_cert_file=$work/pg-server.pem -c ssl_key_file=$work/pg-server.key -c ssl_ca_file=$work/pg-client-ca.pem -c hba_file=$work/pg_hba.conf" \
  start >/dev/null || { cat "$work/pgrun/log" >&2; fail "PostgreSQL with TLS did not start"; }
"$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE ROLE sequencer LOGIN PASSWORD NULL"
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres -O sequencer sequencer

# Keys made by the images themselves, as uid 65532, in a directory it owns.
mkdir -p "$work/mnt/keys" && chown 65532:65532 "$work/mnt/keys"
domain_id=$("${RUN[@]}" "$REGISTRY/domain-manager:$TAG" init --key-file /smoke/keys/namespace.pem --domain-name smoke)
"${RUN[@]}" "$REGISTRY/sequencer:$TAG" generate-key /smoke/keys/sequencer.pem >/dev/null
cat >"$work/mnt/sequencer.toml" <<TOML
domain-id = "$domain_id"
signing-key-file = "/smoke/keys/sequencer.pem"
ops-listen = "127.0.0.1:$OPS"
advertised-address = "https://localhost:$PUBLIC"

[database]
url = "postgres://sequencer@localhost:$PG_PORT/sequencer?sslmode=verify-full&sslrootcert=/smoke/tls/ca.pem"
sslcert = "/smoke/tls/pg-client.pem"
sslkey = "/smoke/tls/pg-client.key"

[public-api]
listen = "127.0.0.1:$PUBLIC"
tls = { cert = "/smoke/tls/server.pem", key = "/smoke/tls/server.key" }

[admin-api]
listen = "127.0.0.1:$ADMIN"
TOML
chmod 0644 "$work/mnt/sequencer.toml"

"${PODMAN[@]}" run -d --name smoke-sequencer --pull=never --network host -v "$work/mnt:/smoke" \
  "$REGISTRY/sequencer:$TAG" --config-file /smoke/sequencer.toml >/dev/null
ready=
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$OPS/health/ready" >/dev/null 2>&1; then ready=1; break; fi
  if [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' smoke-sequencer 2>/dev/null)" != true ]; then break; fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  "${PODMAN[@]}" logs smoke-sequencer >&2 || true
  fail "the sequencer image did not become ready against PostgreSQL with sslmode=verify-full"
fi
sessions=$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
  "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE a.usename = 'sequencer' AND s.client_dn = '/CN=sequencer'), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = 'sequencer'")
IFS='|' read -r encrypted by_cert total <<<"$sessions"
[ "$total" -gt 0 ] && [ "$encrypted" = "$total" ] && [ "$by_cert" = "$total" ] \
  || fail "sequencer database sessions: $encrypted of $total encrypted, $by_cert logged in by certificate as sequencer"
echo "ok: sequencer image ready (/health/ready on :$OPS, which drives gRPC health) over verify-full TLS; $encrypted/$total database sessions encrypted, $by_cert/$total logged in by client certificate (CN=sequencer, no password)"
"${PODMAN[@]}" stop -t 20 smoke-sequencer >/dev/null
code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' smoke-sequencer)
[ "$code" = 0 ] || { "${PODMAN[@]}" logs smoke-sequencer >&2; fail "sequencer exited $code on SIGTERM"; }
"${PODMAN[@]}" rm smoke-sequencer >/dev/null

# --- 3. a wrong CA fails the start, naming the setting ----------------------------------
set +e
err=$(timeout 60 "${RUN[@]}" "$REGISTRY/sequencer:$TAG" --config-file /smoke/sequencer.toml \
  --set database.sslrootcert=/smoke/tls/other-ca.pem 2>&1)
code=$?
set -e
[ "$code" -ne 0 ] && [ "$code" -ne 124 ] || fail "sequencer with a wrong CA exited $code"
grep -q "database.sslrootcert = /smoke/tls/other-ca.pem" <<<"$err" \
  || fail "wrong-CA error does not name database.sslrootcert: $err"
echo "ok: wrong CA refused at start (exit $code): $(grep -o 'TLS connection to the database failed.*' <<<"$err" | head -1 | cut -c1-160)"
