#!/bin/sh
# stockade node installer (run by daemonset.yaml on every node, or by hand).
#
# 1. Copies the stockade binary to the host (INSTALL_DIR, default
#    /usr/local/bin) as `stockade`, with `stockade-runc` beside it (a
#    symlink: the binary speaks runc's command line under that name).
# 2. Adds the runtime handler `stockade` to containerd's config.toml
#    (io.containerd.runc.v2 with BinaryName = INSTALL_DIR/stockade-runc,
#    passing the pods' org.stockade.* annotations on),
#    in a marked block that a later run replaces (idempotent).
# 3. Restarts containerd so it reads the handler (RESTART_CONTAINERD).
#
# Environment (defaults are the DaemonSet's):
#   HOST_ROOT           where the host's / is mounted        (/host; "" = this /)
#   STOCKADE_SOURCE     the binary to install                (/opt/stockade/stockade)
#   INSTALL_DIR         host path of the installed binaries  (/usr/local/bin)
#   CONTAINERD_CONFIG   containerd's config, as seen here    ($HOST_ROOT/etc/containerd/config.toml)
#   RUNTIME_HANDLER     the handler name a RuntimeClass uses (stockade)
#   RESTART_CONTAINERD  systemd | none                       (systemd)
set -eu

HOST_ROOT=${HOST_ROOT-/host}
STOCKADE_SOURCE=${STOCKADE_SOURCE:-/opt/stockade/stockade}
INSTALL_DIR=${INSTALL_DIR:-/usr/local/bin}
CONTAINERD_CONFIG=${CONTAINERD_CONFIG:-$HOST_ROOT/etc/containerd/config.toml}
RUNTIME_HANDLER=${RUNTIME_HANDLER:-stockade}
RESTART_CONTAINERD=${RESTART_CONTAINERD:-systemd}

die() {
  echo "stockade installer: $*" >&2
  exit 1
}

case $RUNTIME_HANDLER in
  *[!a-z0-9-]* | "") die "RUNTIME_HANDLER must be a DNS label (a-z, 0-9, -), got '$RUNTIME_HANDLER'" ;;
esac
case $INSTALL_DIR in
  /*) ;;
  *) die "INSTALL_DIR must be an absolute host path, got '$INSTALL_DIR'" ;;
esac
[ -f "$STOCKADE_SOURCE" ] || die "no stockade binary at STOCKADE_SOURCE=$STOCKADE_SOURCE (the installer image ships it there)"

# 1. The binary: copied beside its final name, then renamed over it, so a
# running container's runtime binary is never half written.
dest=$HOST_ROOT$INSTALL_DIR
mkdir -p "$dest"
cp "$STOCKADE_SOURCE" "$dest/.stockade.new"
chmod 0755 "$dest/.stockade.new"
mv -f "$dest/.stockade.new" "$dest/stockade"
ln -sfn stockade "$dest/.stockade-runc.new"
mv -Tf "$dest/.stockade-runc.new" "$dest/stockade-runc"
echo "installed $INSTALL_DIR/stockade and $INSTALL_DIR/stockade-runc"

# 2. The handler. containerd 1.x configs are `version = 2` (CRI plugin
# io.containerd.grpc.v1.cri); 2.x ones are `version = 3` (the CRI
# runtime moved to io.containerd.cri.v1.runtime).
begin="# BEGIN stockade runtime handler (deploy/kubernetes/install.sh)"
end="# END stockade runtime handler"
mkdir -p "$(dirname "$CONTAINERD_CONFIG")"
[ -f "$CONTAINERD_CONFIG" ] || printf 'version = 2\n' >"$CONTAINERD_CONFIG"
version=$(sed -n 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$CONTAINERD_CONFIG" | head -n1)
case ${version:-1} in
  2) plugin='plugins."io.containerd.grpc.v1.cri".containerd' ;;
  3) plugin='plugins."io.containerd.cri.v1.runtime".containerd' ;;
  *) die "$CONTAINERD_CONFIG is a version ${version:-1} containerd config; convert it with \`containerd config migrate\` (version 2 or 3 are supported)" ;;
esac
# Everything but our own earlier block.
rest=$(mktemp)
trap 'rm -f "$rest"' EXIT
awk -v b="$begin" -v e="$end" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' "$CONTAINERD_CONFIG" >"$rest"
if grep -q "runtimes\.$RUNTIME_HANDLER\]" "$rest" || grep -q "runtimes\.\"$RUNTIME_HANDLER\"\]" "$rest"; then
  die "$CONTAINERD_CONFIG already defines a runtime handler '$RUNTIME_HANDLER' outside the installer's block; remove it or pick another RUNTIME_HANDLER"
fi
new=$CONTAINERD_CONFIG.stockade-new
{
  cat "$rest"
  # Exactly one blank line before the block, whatever the file ended with.
  [ -z "$(tail -c 1 "$rest")" ] || echo
  echo
  echo "$begin"
  echo "[$plugin.runtimes.$RUNTIME_HANDLER]"
  echo '  runtime_type = "io.containerd.runc.v2"'
  # The CRI plugin hands a runtime only the annotations listed here:
  # stockade's own policy keys, from the pod and from its containers.
  echo '  pod_annotations = ["org.stockade.*"]'
  echo '  container_annotations = ["org.stockade.*"]'
  echo "  [$plugin.runtimes.$RUNTIME_HANDLER.options]"
  echo "    BinaryName = \"$INSTALL_DIR/stockade-runc\""
  echo "$end"
} | awk 'NF {blank = 0; print; next} {if (!blank++) print}' >"$new"
if cmp -s "$new" "$CONTAINERD_CONFIG"; then
  rm -f "$new"
  echo "$CONTAINERD_CONFIG already has the '$RUNTIME_HANDLER' handler"
  changed=no
else
  mv -f "$new" "$CONTAINERD_CONFIG"
  echo "added the '$RUNTIME_HANDLER' handler to $CONTAINERD_CONFIG"
  changed=yes
fi

# 3. containerd reads its config only at start.
if [ "$changed" = yes ]; then
  case $RESTART_CONTAINERD in
    systemd)
      # The DaemonSet runs with hostPID: enter the host's namespaces.
      nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd ||
        die "could not restart containerd on the host (systemctl restart containerd); restart it by hand"
      echo "restarted containerd"
      ;;
    none) echo "not restarting containerd (RESTART_CONTAINERD=none): restart it to use the handler" ;;
    *) die "RESTART_CONTAINERD must be systemd or none, got '$RESTART_CONTAINERD'" ;;
  esac
fi
