#!/usr/bin/env bash
# Builds the images the image tests and benchmarks use, as OCI layouts
# cached under $STOCKADE_IMAGES (default /var/cache/stockade-images).
# Idempotent and safe to run concurrently (one flock): each image is
# rebuilt only when its version below changes, into a temporary name
# renamed when complete. Prints nothing but errors. Run as root.
#
#   busybox/            OCI layout, 5 gzip layers, tags latest, entrypoint
#   busybox-zstd/       the same layers compressed with zstd
#   busybox-plain/      the same layers uncompressed
#   busybox.docker.tar  docker-archive (skopeo) of busybox:latest
#   busybox.oci.tar     oci-archive of busybox:latest
#   debian-python/      bookworm minbase + python3, pip, venv (mmdebstrap)
#   wheels/             stockade_hello-1.0-py3-none-any.whl (pure Python)
#   hostile/NAME/       one OCI layout per hostile case (see build.py)
#
# Layouts are tagged `latest` (index.json's org.opencontainers.image.ref.name).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${STOCKADE_IMAGES:-/var/cache/stockade-images}

# Bump a version to rebuild that image (and what is derived from it).
export BUSYBOX_VERSION=1
export DEBIAN_VERSION=1
export HOSTILE_VERSION=1
export WHEEL_VERSION=1

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

py=/usr/bin/python3
[ -x "$py" ] || py=python3

stamp() { cat "$out/.stamps/$1" 2>/dev/null || true; }
mark() { mkdir -p "$out/.stamps" && echo "$2" >"$out/.stamps/$1"; }

if [ "$(stamp busybox)" != "$BUSYBOX_VERSION" ]; then
  "$py" "$here/build.py" busybox "$out"
  for kind in docker oci; do
    rm -f "$out/busybox.$kind.tar" "$out/busybox.$kind.tar.tmp"
  done
  skopeo copy -q oci:"$out/busybox":latest docker-archive:"$out/busybox.docker.tar.tmp":busybox:latest >/dev/null
  mv "$out/busybox.docker.tar.tmp" "$out/busybox.docker.tar"
  skopeo copy -q oci:"$out/busybox":latest oci-archive:"$out/busybox.oci.tar.tmp":latest >/dev/null
  mv "$out/busybox.oci.tar.tmp" "$out/busybox.oci.tar"
  mark busybox "$BUSYBOX_VERSION"
fi

if [ "$(stamp wheel)" != "$WHEEL_VERSION" ]; then
  "$py" "$here/build.py" wheel "$out"
  mark wheel "$WHEEL_VERSION"
fi

if [ "$(stamp hostile)" != "$HOSTILE_VERSION" ]; then
  "$py" "$here/build.py" hostile "$out"
  mark hostile "$HOSTILE_VERSION"
fi

if [ "$(stamp debian-python)" != "$DEBIAN_VERSION" ]; then
  # The machine's configured Debian mirror (deb822 or one-line sources).
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  tmp=$(mktemp -d "$out/.debian.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --mode=root --variant=minbase \
    --include=python3,python3-pip,python3-venv \
    --skip=output/dev,output/mknod \
    bookworm "$tmp/rootfs.tar" "$mirror" >/dev/null 2>"$tmp/log" || {
    cat "$tmp/log" >&2
    exit 1
  }
  "$py" "$here/build.py" debian-python "$out" "$tmp/rootfs.tar"
  rm -rf "$tmp"
  trap - EXIT
  mark debian-python "$DEBIAN_VERSION"
fi
