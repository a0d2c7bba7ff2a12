#!/usr/bin/env bash
# Hermetic image build: assembles the images of deploy/images/Containerfile FROM scratch
# with buildah, from binaries already built on this host plus the shared libraries they
# link (ldd). Pulls nothing, so it works where no registry is reachable.
#
#   cargo build --release --bins && deploy/images/build.sh
#
# Options (also as environment variables):
#   --bin-dir DIR    where the binaries are (BIN_DIR; default target/release)
#   --registry R     image name prefix (REGISTRY; default registry.invalid/domain-runtime)
#   --tag T          image tag (TAG; default the workspace version)
#   --revision REV   org.opencontainers.image.revision (REVISION; default git HEAD)
#
# Produces <registry>/<component>:<tag> for sequencer, mediator, domain-manager, domainctl
# and participant in buildah's vfs storage (/var/lib/containers), where podman with
# `--storage-driver vfs` finds them; `podman push` them to a real registry. The default
# registry is `.invalid` (RFC 2606), so a forgotten prefix fails to pull loudly instead of
# fetching someone else's image.
#
# The layout must stay the Containerfile's; check_layout.py compares the two.
set -euo pipefail
cd "$(dirname "$0")/../.."

COMPONENTS=(sequencer mediator domain-manager domainctl participant)
# In every image too, but no image of their own (the bootstrap Job runs domain-bootstrap
# with `command:` in the domain-manager image).
TOOLS=(domain-bootstrap)
BIN_PATH=/usr/local/bin
USER_SPEC=65532:65532

BIN_DIR=${BIN_DIR:-target/release}
REGISTRY=${REGISTRY:-registry.invalid/domain-runtime}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
while (($#)); do
  case $1 in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --registry) REGISTRY=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --revision) REVISION=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
# The version label comes from the binaries' own Cargo version, like the Containerfile's
# VERSION build argument; TAG only names the image.
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

for c in "${COMPONENTS[@]}" "${TOOLS[@]}"; do
  if [ ! -x "$BIN_DIR/$c" ]; then
    echo "build.sh: $BIN_DIR/$c is missing; build it first (cargo build --release --bins) or pass --bin-dir" >&2
    exit 1
  fi
done
command -v buildah >/dev/null || { echo "build.sh: buildah is not installed (apt-get install buildah)" >&2; exit 1; }

BUILDAH=(buildah --storage-driver vfs)
root=$(mktemp -d /tmp/domain-image-root.XXXXXX)
trap 'rm -rf "$root"' EXIT

# --- the runtime filesystem: binaries, the libraries they link, a passwd for 65532 ---------
mkdir -p "$root$BIN_PATH" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
for c in "${COMPONENTS[@]}" "${TOOLS[@]}"; do
  install -m 0755 "$BIN_DIR/$c" "$root$BIN_PATH/$c"
done
# Every absolute path ldd prints: the libraries and the dynamic loader. -L copies the
# files behind Debian's symlinks, at the paths the binaries ask for.
for c in "${COMPONENTS[@]}" "${TOOLS[@]}"; do
  ldd "$BIN_DIR/$c" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'
done | sort -u | while read -r lib; do
  cp -L --parents "$lib" "$root"
done
# distroless has these entries too; they let tools print a name for uid 65532.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"

# --- one image per component, same content, own entrypoint and title -------------------------
for c in "${COMPONENTS[@]}"; do
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy --quiet "$ctr" "$root" / >/dev/null
  "${BUILDAH[@]}" config \
    --user "$USER_SPEC" \
    --workingdir / \
    --env PATH=/usr/local/bin:/usr/bin:/bin \
    --entrypoint "[\"$BIN_PATH/$c\"]" \
    --cmd '' \
    --label org.opencontainers.image.version="$VERSION" \
    --label org.opencontainers.image.revision="$REVISION" \
    --label org.opencontainers.image.source="https://example.invalid/domain-runtime" \
    --label org.opencontainers.image.licenses="Apache-2.0" \
    --label org.opencontainers.image.vendor="domain-runtime" \
    --label org.opencontainers.image.title="$c" \
    "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$REGISTRY/$c:$TAG" >/dev/null
  echo "$REGISTRY/$c:$TAG"
done
