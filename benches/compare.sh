#!/usr/bin/env bash
# Benchmarks stockade against its peers (bubblewrap, runc, podman) on this
# machine and writes benches/RESULTS.md and benches/PROFILE.md.
#
#   benches/compare.sh            # full run, 2-4 minutes + first build
#   benches/compare.sh --quick    # smoke test, under a minute
#   benches/compare.sh --out-dir /tmp/bench   # leave benches/ alone
#
# Runs as root on Debian/Ubuntu: installs missing peers with apt-get, builds
# stockade in release mode, prepares equivalent setups for every sandbox,
# then times them interleaved (round-robin within one run, so machine noise
# hits every side alike) and profiles stockade's start. A peer that cannot
# be installed or does not work here is skipped with a note in the output;
# it never stops the run.
#
# Then the daemon (`stockade serve`) through its HTTP API: create -> exec
# -> destroy latency, exec into a warm sandbox against `podman exec`,
# sustained creates per second, memory per idle sandbox
# (benches/lib/daemon_bench.py).
#
# Then egress (`--net allowlist`, benches/lib/egress_bench.py), entirely
# inside a network namespace the script makes, against its own server on
# 203.0.113.10 there: bulk throughput and per-connection latency through
# the supervisor's userspace stack against direct, and the cold start of
# an allowlist sandbox against `--net none` and bwrap.
#
# Then stockade as an OCI runtime (benches/lib/oci_bench.py, about half a
# minute): `stockade-runc run` vs `runc run` vs `crun run` on one bundle,
# and `podman run --rm` with each as --runtime (OCI_ROUNDS, OCI_PODMAN_ROUNDS).
#
# Then the caps under attack (benches/lib/limits_bench.py, about half a
# minute): disk overshoot against --disk 50M four ways, with the kernel cap
# and with the polling fallback, and unread loopback socket buffers against
# --memory 64M, beside the same script run with no sandbox.
#
# Environment overrides: COLD_ROUNDS (200), WORK_ROUNDS (15), WARMUP (5),
# PODMAN_EVERY (1: podman runs in every round), STOCKADE (use this binary
# instead of building one), DAEMON_CYCLES (200), DAEMON_EXECS (300),
# DAEMON_SECONDS (15 per client count), DAEMON_DENSITY (100),
# DAEMON_PODMAN_EVERY (2: `podman exec` in every 2nd round of the warm-exec
# benchmark, still interleaved; it takes ~30x as long as the others),
# EGRESS_MIB (256 per transfer), EGRESS_REPS (5), EGRESS_CONNECTS (200),
# EGRESS_LAT_REPS (3), EGRESS_COLD_ROUNDS (60), EGRESS_WARMUP (5),
# SETTLE (1: after each cold-start run, wait untimed until everything it
# left running has exited, so work deferred past one variant's exit never
# slows the next variant's run; 0: no wait).
set -euo pipefail

usage() {
  sed -n '2,46p' "$0" | sed 's/^# \{0,1\}//'
  echo "Options: --quick  --no-install  --no-profile  --no-daemon  --no-egress  --no-limits  --no-v1-attach  --no-images  --no-oci  --out-dir DIR  -h|--help"
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCHES="$REPO/benches"
LIB="$BENCHES/lib"
PY=/usr/bin/python3 # Debian's; the helpers use the standard library only

QUICK=0 INSTALL=1 PROFILE=1 DAEMON=1 EGRESS=1 LIMITS=1 V1ATTACH=1 IMAGES=1 OCI=1
OUT="$BENCHES" # RESULTS.md, PROFILE.md and raw/ go here
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-install) INSTALL=0 ;;
    --no-profile) PROFILE=0 ;;
    --no-daemon) DAEMON=0 ;;
    --no-egress) EGRESS=0 ;;
    --no-limits) LIMITS=0 ;;
    --no-v1-attach) V1ATTACH=0 ;;
    --no-images) IMAGES=0 ;;
    --no-oci) OCI=0 ;;
    --out-dir)
      [ $# -ge 2 ] || { echo "compare.sh: --out-dir needs a directory" >&2; exit 2; }
      OUT=$2
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
SETTLE=${SETTLE:-1}
if [ "$QUICK" = 1 ]; then
  COLD_ROUNDS=${COLD_ROUNDS:-20} WORK_ROUNDS=${WORK_ROUNDS:-3} WARMUP=${WARMUP:-2}
  PROFILE_RUNS=8 CPU_PROFILE_RUNS=10
else
  COLD_ROUNDS=${COLD_ROUNDS:-200} WORK_ROUNDS=${WORK_ROUNDS:-15} WARMUP=${WARMUP:-5}
  PROFILE_RUNS=15 CPU_PROFILE_RUNS=40
fi
PODMAN_EVERY=${PODMAN_EVERY:-1}

# stockade's default limits (crates/stockade-policy Limits::default). The
# cgroup-capable peers get the same ones so that all of them do the same
# cgroup work; bwrap has no cgroup support and runs without limits.
LIMIT_MEMORY_BYTES=$((16 * 1024 * 1024 * 1024))
LIMIT_MEMORY_PODMAN=16g
LIMIT_CPUS=4
LIMIT_PIDS=4096

NOTES=() # shown under "Skipped, failed and notes" in RESULTS.md
log() { printf '==> %s\n' "$*" >&2; }
note() {
  NOTES+=("$*")
  log "note: $*"
}

SECONDS=0
if [ "$(id -u)" != 0 ]; then
  echo "compare.sh: run it as root (stockade run, runc and the cgroup probe need root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ left in benches/lib

WORK=$(mktemp -d /var/tmp/stockade-bench.XXXXXX)
# mktemp makes it 0700; the sandboxes' own root ids (unprivileged on the
# host) must be able to reach the workspace and rootfs below it.
chmod 755 "$WORK"
cleanup() {
  # A runc container left behind by an interrupted run would keep its
  # cgroups; remove ours by their name prefix.
  if command -v runc >/dev/null; then
    runc list -q 2>/dev/null | grep '^stockade-bench-' | xargs -r -n1 runc delete -f >/dev/null 2>&1 || true
  fi
  # daemon_bench.py's warm podman container, if it was interrupted
  # before removing it.
  if command -v podman >/dev/null; then
    podman ps -a --format '{{.Names}}' 2>/dev/null | grep '^stockade-bench-' |
      xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. peers --------------------------------------------------------------

APT_UPDATED=0
apt_install() { # pkg: installs one package; returns non-zero on failure
  command -v apt-get >/dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >"$WORK/apt-update.log" 2>&1 || true
    APT_UPDATED=1
  fi
  log "apt-get install $1"
  # --no-install-recommends: podman would otherwise pull in crun, slirp
  # and buildah, none of which this benchmark uses.
  apt-get install -y -qq --no-install-recommends "$1" >"$WORK/apt-$1.log" 2>&1
}

# need CMD PKG: makes sure CMD exists, installing PKG if it does not.
need() {
  command -v "$1" >/dev/null && return 0
  [ "$INSTALL" = 1 ] && apt_install "$2" && command -v "$1" >/dev/null && return 0
  return 1
}

install_peers() {
  need "$PY" python3 || { echo "compare.sh: $PY is missing and could not be installed" >&2; exit 1; }
  # Tools of the benchmark itself (hyperfine is not used: the timer is
  # benches/lib/timer.py, which interleaves the peers within one run).
  need gcc gcc || note "gcc missing and not installable: the workload benchmark will fail"
  need make make || note "make missing and not installable: the workload benchmark will fail"
  if [ "$EGRESS" = 1 ]; then
    need curl curl || note "curl missing and not installable: the egress throughput benchmark will fail"
    need unshare util-linux || note "unshare missing: the egress benchmark cannot make its network namespace"
    need ip iproute2 || note "ip missing and not installable: the egress benchmark cannot set up its network namespace"
  fi
  need strace strace || note "strace missing and not installable: no system call table in PROFILE.md"
  if [ "$V1ATTACH" = 1 ]; then
    need qemu-system-x86_64 qemu-system-x86 || note "qemu-system-x86 missing and not installable"
    need busybox busybox-static || note "busybox-static missing and not installable"
  fi
  # runc before podman, so that podman's dependency on an OCI runtime is
  # met by runc instead of pulling in crun.
  HAVE_BWRAP=0 HAVE_RUNC=0 HAVE_PODMAN=0 HAVE_PERF=0
  if need bwrap bubblewrap; then HAVE_BWRAP=1; else note "bwrap skipped: bubblewrap is not installed and apt-get could not install it"; fi
  if need runc runc; then HAVE_RUNC=1; else note "runc skipped: not installed and apt-get could not install it"; fi
  if need podman podman; then HAVE_PODMAN=1; else note "podman skipped: not installed and apt-get could not install it"; fi
  if [ "$OCI" = 1 ]; then
    need crun crun || note "crun missing and not installable (the OCI benchmark reports it as such)"
    need umoci umoci || note "umoci missing and not installable (the OCI benchmark needs it for its bundle)"
  fi
  if [ "$PROFILE" = 1 ]; then
    if need perf linux-perf && perf stat -e task-clock -- true >/dev/null 2>&1; then
      HAVE_PERF=1
    else
      PERF_NOTE="perf is not installed or does not work with this kernel ($(uname -r))"
      note "$PERF_NOTE: PROFILE.md has the strace view only"
    fi
  fi
}

# --- 2. stockade -----------------------------------------------------------

build_stockade() {
  local src built
  # .cargo/config.toml builds for an explicit target (a static binary), so
  # cargo puts it under target/<host triple>/release.
  built=$(ls -t "$REPO"/target/*-linux-*/release/stockade 2>/dev/null | head -1 || true)
  if [ -n "${STOCKADE:-}" ]; then
    src=$STOCKADE
    log "using STOCKADE=$src (not building)"
  elif command -v cargo >/dev/null; then
    log "cargo build --release -p stockade"
    (cd "$REPO" && cargo build --release -p stockade --quiet)
    src="${CARGO_TARGET_DIR:-$REPO/target}/$(rustc -vV | sed -n 's/^host: //p')/release/stockade"
  elif [ -n "$built" ]; then
    # sudo resets PATH, so ~/.cargo/bin is usually missing here.
    src=$built
    note "cargo is not on PATH (sudo resets it): benchmarked the existing ${built#"$REPO"/} without rebuilding it"
  else
    echo "compare.sh: cargo is not on PATH and no target/<triple>/release/stockade exists;" \
      "build it first (cargo build --release -p stockade) or pass STOCKADE=/path/to/stockade" >&2
    exit 1
  fi
  # Benchmark a copy: a rebuild during the run (another shell, an editor's
  # cargo check) must not swap the binary between samples.
  mkdir -p "$WORK/bin"
  cp "$src" "$WORK/bin/stockade"
  SK="$WORK/bin/stockade"
  SK_VERSION="$("$SK" --version) (\$WORK/bin/stockade, a copy of ${src#"$REPO"/}; sha256 $(sha256sum "$SK" | cut -c1-12), built $(date -u -r "$src" '+%Y-%m-%d %H:%M UTC'))"
}

# --- 3. equivalent setups ----------------------------------------------------

# The merged-/usr top-level entries (bin -> usr/bin, ...) as this host has
# them; each sandbox gets the same ones.
USR_LINKS=()
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then USR_LINKS+=("$d:$(readlink "/$d")"); fi
done

bwrap_base() { # the brief's bubblewrap command line, minus the command
  local args=(bwrap --unshare-all --ro-bind /usr /usr)
  local l
  for l in "${USR_LINKS[@]}"; do args+=(--symlink "${l#*:}" "/${l%%:*}"); done
  args+=(--proc /proc --dev /dev --tmpfs /tmp)
  printf '%s\n' "${args[@]}"
}

# A root filesystem directory shared by runc and podman: empty mount points
# plus the merged-/usr symlinks; /usr itself is bound from the host
# read-only by each runtime, as stockade and bwrap do.
prepare_rootfs() {
  ROOTFS="$WORK/rootfs"
  mkdir -p "$ROOTFS"/{usr,proc,dev,sys,tmp,etc,run}
  local l
  for l in "${USR_LINKS[@]}"; do ln -s "${l#*:}" "$ROOTFS/${l%%:*}"; done
}

# runc's bundle: `runc spec` edited for a read-only root made of the
# rootfs above, host /usr bound read-only, the usual namespaces plus a
# cgroup namespace (stockade and bwrap have one), and stockade's limits.
prepare_runc_bundle() {
  BUNDLE="$WORK/bundle"
  mkdir -p "$BUNDLE"
  (cd "$BUNDLE" && runc spec)
  ROOTFS="$ROOTFS" MEM=$LIMIT_MEMORY_BYTES CPUS=$LIMIT_CPUS PIDS=$LIMIT_PIDS \
    "$PY" - "$BUNDLE/config.json" <<'EOF'
import json, os, sys
path = sys.argv[1]
c = json.load(open(path))
c["root"] = {"path": os.environ["ROOTFS"], "readonly": True}
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                    "options": ["rbind", "ro", "nosuid", "nodev"]})
c["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777", "size=1g"]})
ns = c["linux"]["namespaces"]
if not any(n["type"] == "cgroup" for n in ns):
    ns.append({"type": "cgroup"})
mem = int(os.environ["MEM"])
c["linux"]["resources"].update({
    # swap == memory: swap cannot extend the limit, as in stockade
    "memory": {"limit": mem, "swap": mem},
    "cpu": {"quota": int(os.environ["CPUS"]) * 100000, "period": 100000},
    "pids": {"limit": int(os.environ["PIDS"])},
})
json.dump(c, open(path, "w"), indent=1)
EOF
}

prepare_c_project() {
  CPROJ="$WORK/cproject"
  "$PY" "$LIB/cproject.py" "$CPROJ/template"
  local v
  for v in host stockade bwrap; do cp -a "$CPROJ/template" "$CPROJ/$v"; done
  # stockade refuses a root-owned workspace (the agent writes as the
  # workspace's owner); give its copy to an ordinary user id.
  chown -R 1000:1000 "$CPROJ/stockade"
}

# --- 4./5. plans and runs ----------------------------------------------------

# Plans for timer.py are built from records on stdin, one per variant:
# name, every, cwd, setup command, argv..., fields separated by \x1f and
# records by \x1e, so arguments may contain spaces.
write_plan() { # out warmup rounds [settle: 1] < records
  # The program comes from -c, not a here-document, because stdin carries
  # the records.
  "$PY" -c '
import json, sys
out, warmup, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settle = len(sys.argv) > 4 and sys.argv[4] == "1"
variants = []
for rec in sys.stdin.read().split("\x1e"):
    if not rec.strip("\n"):
        continue
    name, every, cwd, setup, *argv = rec.strip("\n").split("\x1f")
    # A leading `env NAME=VALUE...` becomes the environment of the variant
    # (timer.py sets it), so no env process is timed with the command.
    env = {}
    if argv[:1] == ["env"]:
        argv = argv[1:]
        while argv and "=" in argv[0] and not argv[0].startswith("/"):
            k, _, val = argv.pop(0).partition("=")
            env[k] = val
    v = {"name": name, "every": int(every), "argv": argv}
    if env:
        v["env"] = env
    if cwd:
        v["cwd"] = cwd
    if setup:
        v["setup"] = ["sh", "-c", setup]
    variants.append(v)
json.dump({"warmup": warmup, "rounds": rounds, "variants": variants,
           "settle": settle}, open(out, "w"), indent=1)
' "$@"
}

record() { # name every cwd setup argv...: one plan record on stdout
  local IFS=$'\x1f'
  printf '%s\x1e' "$*"
}

# An ordinary user for the rootless rows (made once, with the subordinate
# ids Debian's useradd gives), and the binary where it may run it.
RL_USER= RL_DIR=
prepare_rootless() {
  local u=stockade-bench
  if ! id "$u" >/dev/null 2>&1 && ! useradd -m -s /bin/sh "$u" 2>/dev/null; then
    note "rootless rows skipped: cannot create user $u"
    return
  fi
  if ! command -v setpriv >/dev/null; then
    note "rootless rows skipped: setpriv (util-linux) is missing"
    return
  fi
  RL_DIR="$WORK/rootless"
  mkdir -p "$RL_DIR/state"
  cp "$SK" "$RL_DIR/stockade"
  chmod 755 "$RL_DIR" "$RL_DIR/stockade"
  chown "$u:" "$RL_DIR/state"
  RL_USER=$u
}

cold_start_bench() {
  local bw=()
  mapfile -t bw < <(bwrap_base)
  {
    record host 1 "" "" /bin/true
    record stockade 1 "" "" "$SK" run -- /bin/true
    # The same, waiting for its own teardown as stockade did before the
    # detached cleaner: what deferring the teardown buys.
    record "stockade, teardown waited for" 1 "" "" \
      "$SK" run --wait-for-teardown -- /bin/true
    # The same, making its user and network namespaces as it starts
    # instead of taking a ready pair from the pool: what the pool buys.
    record "stockade, no namespace pool" 1 "" "" \
      env STOCKADE_NS_POOL=0 "$SK" run -- /bin/true
    if [ "$HAVE_BWRAP" = 1 ]; then record bwrap 1 "" "" "${bw[@]}" /bin/true; fi
    # Rootless (issue 18): stockade and bwrap run by the same ordinary
    # user, both through setpriv, so its cost is on both sides.
    if [ -n "$RL_USER" ]; then
      local as=(setpriv --reuid "$RL_USER" --regid "$RL_USER" --init-groups --reset-env)
      record "stockade, rootless" 1 "" "" "${as[@]}" env STOCKADE_STATE_DIR="$RL_DIR/state" \
        "$RL_DIR/stockade" run -- /bin/true
      if [ "$HAVE_BWRAP" = 1 ]; then
        record "bwrap, same user" 1 "" "" "${as[@]}" "${bw[@]}" /bin/true
      fi
    fi
    if [ "$HAVE_RUNC" = 1 ]; then
      record runc 1 "" "" runc run --bundle "$BUNDLE" "stockade-bench-{run}"
    fi
    if [ "$HAVE_PODMAN" = 1 ]; then
      # --runtime runc: the same runtime as the runc row (crun does not
      # handle a hybrid v1/v2 cgroup layout). The ulimits: podman asks
      # for nofile=1048576 by default, above the hard limit of many hosts
      # (20000 on the one this was written on), and runc then fails.
      record podman "$PODMAN_EVERY" "" "" podman run --rm --runtime runc \
        --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network none \
        --memory "$LIMIT_MEMORY_PODMAN" --memory-swap "$LIMIT_MEMORY_PODMAN" \
        --cpus "$LIMIT_CPUS" --pids-limit "$LIMIT_PIDS" \
        -v /usr:/usr:ro --rootfs "$ROOTFS" /bin/true
    fi
  } | write_plan "$WORK/cold-plan.json" "$WARMUP" "$COLD_ROUNDS" "$SETTLE"
  log "cold start: $COLD_ROUNDS interleaved rounds (+$WARMUP warm-up)"
  "$PY" "$LIB/timer.py" "$WORK/cold-plan.json" --out "$OUT/raw/cold-start.json" --label "cold start"
}

workload_bench() {
  local bw=() d="$CPROJ"
  mapfile -t bw < <(bwrap_base)
  {
    record host 1 "$d/host" "make -s -C $d/host clean" make -j2 -s
    record stockade 1 "" "make -s -C $d/stockade clean" \
      "$SK" run --workspace "$d/stockade" -- make -j2 -s
    if [ "$HAVE_BWRAP" = 1 ]; then
      record bwrap 1 "" "make -s -C $d/bwrap clean" \
        "${bw[@]}" --bind "$d/bwrap" /workspace --chdir /workspace make -j2 -s
    fi
  } | write_plan "$WORK/work-plan.json" 2 "$WORK_ROUNDS"
  log "workload: $WORK_ROUNDS interleaved rounds of make -j2 (+2 warm-up)"
  "$PY" "$LIB/timer.py" "$WORK/work-plan.json" --out "$OUT/raw/workload.json" --label "workload"
}

daemon_bench() {
  local args=(--stockade "$SK" --work "$WORK" --out "$OUT/raw/daemon.json")
  [ "$QUICK" = 1 ] && args+=(--quick)
  if [ "$HAVE_PODMAN" = 1 ]; then
    args+=(--podman --rootfs "$ROOTFS" --memory "$LIMIT_MEMORY_PODMAN"
      --cpus "$LIMIT_CPUS" --pids "$LIMIT_PIDS" --podman-every "${DAEMON_PODMAN_EVERY:-2}")
  fi
  log "daemon: stockade serve through its HTTP API"
  rm -f "$OUT/raw/daemon.json"
  if ! "$PY" "$LIB/daemon_bench.py" "${args[@]}"; then
    note "the daemon benchmark failed (see its output above; what it measured before failing is in RESULTS.md)"
  fi
  DAEMON_JSON="$OUT/raw/daemon.json"
  [ -f "$DAEMON_JSON" ] || DAEMON_JSON=
}

egress_bench() {
  local args=(--stockade "$SK" --timer "$LIB/timer.py" --work "$WORK"
    --out "$OUT/raw/egress.json")
  [ "$QUICK" = 1 ] && args+=(--quick)
  if [ "$HAVE_BWRAP" = 1 ]; then
    bwrap_base >"$WORK/bwrap-base.txt"
    args+=(--bwrap-args "$WORK/bwrap-base.txt")
  fi
  log "egress: --net allowlist in a private network namespace"
  rm -f "$OUT/raw/egress.json"
  if ! "$PY" "$LIB/egress_bench.py" "${args[@]}"; then
    note "the egress benchmark failed (see its output above; what it measured before failing is in RESULTS.md)"
  fi
  EGRESS_JSON="$OUT/raw/egress.json"
  [ -f "$EGRESS_JSON" ] || EGRESS_JSON=
}

limits_bench() {
  local args=(--stockade "$SK" --out "$OUT/raw/limits.json" --md "$WORK/limits.md")
  [ "$QUICK" = 1 ] && args+=(--quick)
  log "limits: disk overshoot and socket memory under attack"
  rm -f "$WORK/limits.md"
  if ! "$PY" "$LIB/limits_bench.py" "${args[@]}"; then
    note "the limits benchmark failed (see its output above)"
  fi
  LIMITS_MD="$WORK/limits.md"
  [ -f "$LIMITS_MD" ] || LIMITS_MD=
}

# Container images (benches/lib/images_bench.py): start on a 5-layer image,
# pull + unpack against podman and skopeo+umoci from a local registry, 100
# sandboxes on one image (disk and page cache).
images_bench() {
  local args=(--stockade "$SK" --out "$OUT/raw/images.json" --md "$WORK/images.md")
  [ "$QUICK" = 1 ] && args+=(--quick)
  log "images: start on an image, pull vs podman, 100 sandboxes on one image"
  rm -f "$WORK/images.md"
  if ! "$PY" "$LIB/images_bench.py" "${args[@]}"; then
    note "the images benchmark failed (see its output above)"
  fi
  IMAGES_MD="$WORK/images.md"
  [ -f "$IMAGES_MD" ] || IMAGES_MD=
}

# stockade as an OCI runtime (benches/lib/oci_bench.py): `RUNTIME run` on
# one bundle for stockade-runc, runc and crun; `podman run --rm` with each.
oci_bench() {
  local args=(--stockade "$SK" --out "$OUT/raw/oci.json" --md "$WORK/oci.md")
  [ "$QUICK" = 1 ] && args+=(--quick)
  log "oci: stockade-runc vs runc vs crun, and podman run --rm with each"
  rm -f "$WORK/oci.md"
  if ! "$PY" "$LIB/oci_bench.py" "${args[@]}"; then
    note "the OCI runtime benchmark failed (see its output above)"
  fi
  OCI_MD="$WORK/oci.md"
  [ -f "$OCI_MD" ] || OCI_MD=
}

# --- 6. results ---------------------------------------------------------------

version_of() { # cmd: its version line, or "not installed"
  case "$1" in
    bwrap) command -v bwrap >/dev/null && bwrap --version | head -1 || echo "not installed" ;;
    runc) command -v runc >/dev/null && runc --version | head -1 || echo "not installed" ;;
    podman) command -v podman >/dev/null && podman --version | head -1 || echo "not installed" ;;
    gcc) gcc --version | head -1 ;;
    make) make --version | head -1 ;;
  esac
}

cgroup_layout() {
  local v1 v2
  v1=$(awk '$3 == "cgroup"' /proc/mounts | wc -l)
  v2=$(awk '$3 == "cgroup2" {print $2}' /proc/mounts | head -1)
  if [ "$v1" -gt 0 ]; then
    echo "v1, $v1 hierarchies${v2:+, plus cgroup2 at $v2 (hybrid)}; stockade: $("$SK" doctor 2>/dev/null | sed -n 's/^.*cgroups *//p' | head -1)"
  else
    echo "v2 only${v2:+ at $v2}"
  fi
}

# Facts about this machine and run go to meta.json; report.py turns them
# and the samples into RESULTS.md and prints the tables.
write_results() {
  local notes_file="$WORK/notes.txt"
  printf '%s\n' "${NOTES[@]+"${NOTES[@]}"}" >"$notes_file"
  DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
  LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)" \
  CPU="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  NPROC="$(nproc)" \
  MEMORY="$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
  KERNEL="$(uname -r)" \
  OS="$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)" \
  CGROUPS="$(cgroup_layout)" \
  V_STOCKADE="$SK_VERSION" V_BWRAP="$(version_of bwrap)" V_RUNC="$(version_of runc)" \
  V_PODMAN="$(version_of podman)" V_GCC="$(version_of gcc)" V_MAKE="$(version_of make)" \
  V_PY="$("$PY" --version)" WORK_DIR="$WORK" PODMAN_EVERY="$PODMAN_EVERY" QUICK="$QUICK" \
    "$PY" - "$WORK/meta.json" "$notes_file" <<'EOF'
import json, os, sys
e = os.environ
notes = [n for n in open(sys.argv[2]).read().splitlines() if n]
if e["QUICK"] == "1":
    notes.insert(0, "quick smoke run (--quick): too few rounds for "
                 "publishing; run without --quick for real numbers")
if e["PODMAN_EVERY"] != "1":
    notes.append(f"podman ran only in every {e['PODMAN_EVERY']}th round "
                 "(PODMAN_EVERY), still interleaved with the others")
meta = {
    "date": e["DATE"], "work_dir": e["WORK_DIR"], "load_before": e["LOAD_BEFORE"],
    "load_after": e["LOAD_AFTER"],
    "machine": {"cpu": e["CPU"], "nproc": e["NPROC"], "memory": e["MEMORY"],
                "kernel": e["KERNEL"], "os": e["OS"], "cgroups": e["CGROUPS"]},
    "versions": {"stockade": e["V_STOCKADE"], "bubblewrap": e["V_BWRAP"],
                 "runc": e["V_RUNC"], "podman": e["V_PODMAN"],
                 "gcc": e["V_GCC"], "make": e["V_MAKE"], "timer": e["V_PY"]},
    "notes": notes,
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
  "$PY" "$LIB/report.py" --meta "$WORK/meta.json" --cold "$OUT/raw/cold-start.json" \
    --workload "$OUT/raw/workload.json" ${DAEMON_JSON:+--daemon "$DAEMON_JSON"} \
    ${EGRESS_JSON:+--egress "$EGRESS_JSON"} ${V1_MD:+--v1-attach "$V1_MD"} \
    ${LIMITS_MD:+--limits "$LIMITS_MD"} ${IMAGES_MD:+--images "$IMAGES_MD"} \
    ${OCI_MD:+--oci "$OCI_MD"} \
    --out "$OUT/RESULTS.md"
}

# --- cgroup v1 attach (QEMU) -------------------------------------------------------
# What init joining its own cgroup buys on a default v1 kernel
# (benches/cgroup-v1-attach.sh, about a minute under software emulation).
v1_attach_bench() {
  if ! command -v qemu-system-x86_64 >/dev/null || ! command -v busybox >/dev/null; then
    note "cgroup v1 attach benchmark skipped: needs qemu-system-x86 and busybox-static"
    return
  fi
  log "cgroup v1 attach: booting a default kernel under QEMU"
  local rounds=20
  [ "$QUICK" = 1 ] && rounds=6
  if "$REPO/benches/cgroup-v1-attach.sh" "$SK" "$rounds" >"$OUT/raw/v1-attach.md" 2>"$WORK/v1-attach.err"; then
    V1_MD="$OUT/raw/v1-attach.md"
  else
    note "cgroup v1 attach benchmark failed: $(tail -n 3 "$WORK/v1-attach.err" | tr '\n' ' ')"
    rm -f "$OUT/raw/v1-attach.md"
  fi
}

# --- 7. profile ----------------------------------------------------------------

profile_stockade() {
  local p="$WORK/profile" i args=()
  mkdir -p "$p"
  log "profiling stockade's start"
  # Starts are spaced out, as in the interleaved benchmark: back-to-back
  # starts hide the cgroup attach cost (see cgroup_attach_probe.py).
  if command -v strace >/dev/null; then
    for i in 1 2 3 4 5; do
      strace -c -f -o "$p/strace-sys.$i" "$SK" run -- /bin/true
      sleep 0.25
      strace -c -w -f -o "$p/strace-wall.$i" "$SK" run -- /bin/true
      sleep 0.25
    done
    args+=(--strace-sys "$p"/strace-sys.* --strace-wall "$p"/strace-wall.*)
  else
    : >"$p/empty"
    args+=(--strace-sys "$p/empty" --strace-wall "$p/empty")
  fi
  # Expanded by the inner sh: $0 = stockade, $1 = starts, $2 = pause.
  # shellcheck disable=SC2016
  local loop='for i in $(seq "$1"); do "$0" run -- /bin/true; sleep "$2"; done'
  if [ "$HAVE_PERF" = 1 ]; then
    if perf record -q -o "$p/timeline.data" -e "$("$PY" "$LIB/profile_report.py" --timeline-events)" \
      -- sh -c "$loop" "$SK" "$PROFILE_RUNS" 0.25 >"$p/perf-timeline.log" 2>&1; then
      perf script -i "$p/timeline.data" -F pid,time,event,trace >"$p/timeline.txt" 2>/dev/null
      args+=(--timeline "$p/timeline.txt")
    else
      note "perf could not record the timeline tracepoints: $(tail -1 "$p/perf-timeline.log")"
    fi
    # 64 KiB of stack per sample: less and the DWARF unwinder loses the
    # Rust frames above libc's system call wrappers.
    if perf record -q -o "$p/cpu.data" -e cpu-clock -F 5000 --call-graph dwarf,65528 \
      -- sh -c "$loop" "$SK" "$CPU_PROFILE_RUNS" 0.1 >"$p/perf-cpu.log" 2>&1; then
      perf script -i "$p/cpu.data" --comm stockade -F comm,tid,ip,sym,dso >"$p/cpu.txt" 2>/dev/null
      args+=(--perf-script "$p/cpu.txt" --perf-freq 5000 --perf-runs "$CPU_PROFILE_RUNS")
      rm -f "$p/cpu.data"
    else
      note "perf could not sample CPU stacks: $(tail -1 "$p/perf-cpu.log")"
    fi
    perf stat -r 20 -e task-clock,context-switches,cpu-migrations,page-faults \
      -o "$p/perf-stat.txt" "$SK" run -- /bin/true
    args+=(--perf-stat "$p/perf-stat.txt")
  else
    args+=(--perf-note "${PERF_NOTE:-perf unavailable}")
  fi
  "$PY" "$LIB/cgroup_attach_probe.py" --out "$p/probe.json" >/dev/null
  args+=(--probe "$p/probe.json")
  local untraced
  untraced=$("$PY" -c 'import json,statistics,sys; print(statistics.median(json.load(open(sys.argv[1]))["variants"]["stockade"]["samples_ns"]) / 1e6)' "$OUT/raw/cold-start.json")
  "$PY" "$LIB/profile_report.py" "${args[@]}" --untraced-ms "$untraced" \
    --date "$(date -u '+%Y-%m-%d %H:%M UTC')" --out "$OUT/PROFILE.md"
}

# --- main ------------------------------------------------------------------------

main() {
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  install_peers
  build_stockade
  prepare_rootfs
  if [ "$HAVE_RUNC" = 1 ]; then prepare_runc_bundle; fi
  prepare_c_project
  mkdir -p "$OUT/raw"
  prepare_rootless
  cold_start_bench
  workload_bench
  DAEMON_JSON=
  if [ "$DAEMON" = 1 ]; then daemon_bench; else note "daemon benchmark skipped (--no-daemon)"; fi
  EGRESS_JSON=
  if [ "$EGRESS" = 1 ]; then egress_bench; else note "egress benchmark skipped (--no-egress)"; fi
  LIMITS_MD=
  if [ "$LIMITS" = 1 ]; then limits_bench; else note "limits benchmark skipped (--no-limits)"; fi
  V1_MD=
  if [ "$V1ATTACH" = 1 ]; then v1_attach_bench; else note "cgroup v1 attach benchmark skipped (--no-v1-attach)"; fi
  IMAGES_MD=
  if [ "$IMAGES" = 1 ]; then images_bench; else note "images benchmark skipped (--no-images)"; fi
  OCI_MD=
  if [ "$OCI" = 1 ]; then oci_bench; else note "OCI runtime benchmark skipped (--no-oci)"; fi
  write_results
  if [ "$PROFILE" = 1 ]; then
    profile_stockade
    log "done in ${SECONDS}s: $OUT/RESULTS.md, $OUT/PROFILE.md"
  else
    log "done in ${SECONDS}s: $OUT/RESULTS.md"
  fi
}

main
