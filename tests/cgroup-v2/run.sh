#!/bin/bash
# Boots a Debian kernel under QEMU (software emulation, no KVM needed) with a
# pure cgroup v2 hierarchy and runs stockade inside the guest, to exercise
# the v2 cgroup driver on a real kernel.
#
# Usage: tests/cgroup-v2/run.sh [path/to/stockade]
#
# Needs (as root on a Debian 12 host): qemu-system-x86, busybox-static and
# apt access to download (not install) a linux-image-6.1 package. The kernel
# is cached in ${STOCKADE_QEMU_CACHE:-/var/cache/stockade-qemu}; set
# STOCKADE_QEMU_KERNEL to use a specific bzImage instead.
#
# Prints the guest console and exits 0 only when every V2CHECK line the
# guest prints is PASS and all expected checks are present.
#
# For benchmarks: STOCKADE_QEMU_CGROUP=v1 mounts cgroup v1 hierarchies
# (cpu, cpuacct, memory, pids, freezer) instead, and
# STOCKADE_QEMU_SCENARIO=FILE runs FILE in place of the checks (none are
# then expected); its output is on the console.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-$repo/target/$(rustc -vV | sed -n 's/^host: //p')/debug/stockade}
cache=${STOCKADE_QEMU_CACHE:-/var/cache/stockade-qemu}
checks="doctor hello memory pids cpu timeout cleanup version rootless-hello rootless-auto-delegation rootless-memory rootless-pids rootless-cpu rootless-cleanup oci-cgroup oci-limits oci-update-pause oci-run-delete oci-pids oci-memory oci-systemd oci-missing-controller oci-cleanup"
cgroup_mode=${STOCKADE_QEMU_CGROUP:-v2}
case "$cgroup_mode" in v1 | v2) ;; *) echo "run.sh: STOCKADE_QEMU_CGROUP must be v1 or v2" >&2; exit 2 ;; esac
if [ -n "${STOCKADE_QEMU_SCENARIO:-}" ]; then checks=""; fi

die() { echo "run.sh: $*" >&2; exit 2; }

[ -x "$bin" ] || die "no stockade binary at $bin (cargo build -p stockade)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox missing (apt-get install busybox-static)"
if LC_ALL=C ldd "$busybox" 2>/dev/null | grep -q '=>'; then
    die "$busybox is not statically linked (apt-get install busybox-static)"
fi

# --- kernel ---------------------------------------------------------------
kernel_from_cache() {
    mkdir -p "$cache"
    if [ -s "$cache/vmlinuz" ]; then
        return
    fi
    local pkg tmp
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
        awk '{print $1}' | sort -V | tail -n 1)
    if [ -z "$pkg" ]; then
        pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' |
            awk '{print $1}' | sort -V | tail -n 1)
    fi
    [ -n "$pkg" ] || die "no linux-image-6.1.0-*-amd64 package known to apt (apt-get update?)"
    tmp=$(mktemp -d)
    chmod 755 "$tmp" # apt-get download drops to _apt, which must write here
    echo "run.sh: downloading $pkg into $cache" >&2
    (cd "$tmp" && apt-get download -q "$pkg" >&2) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
    dpkg-deb -x "$tmp"/*.deb "$tmp/x"
    local img
    img=$(ls "$tmp"/x/boot/vmlinuz-* | head -n 1)
    [ -s "$img" ] || { rm -rf "$tmp"; die "no boot/vmlinuz-* in $pkg"; }
    cp "$img" "$cache/vmlinuz.part"
    basename "$img" >"$cache/kernel-version"
    mv "$cache/vmlinuz.part" "$cache/vmlinuz"
    rm -rf "$tmp"
}

if [ -n "${STOCKADE_QEMU_KERNEL:-}" ]; then
    kernel=$STOCKADE_QEMU_KERNEL
else
    kernel_from_cache
    kernel=$cache/vmlinuz
fi
[ -s "$kernel" ] || die "no kernel at $kernel"

# --- initramfs ------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/usr/bin "$root"/usr/lib/x86_64-linux-gnu "$root"/usr/lib64 \
    "$root"/proc "$root"/sys "$root"/dev "$root"/tmp "$root"/etc "$root"/newroot \
    "$root"/var/lib "$root"/root
# Debian's merged-/usr layout, which the sandbox reproduces from the host.
ln -s usr/bin "$root/bin"
ln -s usr/bin "$root/sbin"
ln -s bin "$root/usr/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

cp "$busybox" "$root/usr/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/usr/bin/$applet"
done

# stockade and the shared objects it loads, at the same paths as here (none
# for the usual static build: ldd then prints no path).
cp "$bin" "$root/usr/bin/stockade"
ln -s stockade "$root/usr/bin/stockade-runc"
if command -v strip >/dev/null; then
    strip --strip-debug "$root/usr/bin/stockade" 2>/dev/null || true
fi
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    real=$(readlink -f "$lib")
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$real" "$root$lib"
done

echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
# An ordinary user for the rootless checks (no /etc/subuid in the guest:
# its sandboxes get a single id).
echo "rl:x:1000:1000:rl:/tmp/rl:/bin/sh" >>"$root/etc/passwd"
echo "rl:x:1000:" >>"$root/etc/group"

# Stage 1: the initramfs root cannot be pivot_root'ed away from, and
# stockade pivots inside every sandbox, so move everything onto a tmpfs
# and switch_root into it.
cat >"$root/init" <<'EOF'
#!/bin/sh
mount -t tmpfs -o mode=0755 newroot /newroot
for f in /*; do
    case "$f" in
    /newroot | /proc | /sys | /dev) ;;
    *) cp -a "$f" /newroot/ ;;
    esac
done
mkdir -p /newroot/proc /newroot/sys /newroot/dev
exec switch_root /newroot /stage2
EOF

# Stage 2: mounts and the scenario.
cat >"$root/stage2" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
if [ -f /cgroup-v1 ]; then
    mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup
    for c in cpu cpuacct memory pids freezer; do
        mkdir -p /sys/fs/cgroup/$c
        mount -t cgroup -o $c $c /sys/fs/cgroup/$c
    done
else
    mount -t cgroup2 none /sys/fs/cgroup
fi
mkdir -p /var/lib/stockade
export PATH=/usr/bin HOME=/root
echo "guest: $(uname -r), cgroup root: $(awk '$2 == "/sys/fs/cgroup" { print $3 }' /proc/mounts), controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || echo v1)"
sh /scenario.sh
if [ -f /extra.sh ]; then
    echo; echo "=== extra (not part of the checks) ==="
    sh /extra.sh
fi
echo "V2DONE"
sync
poweroff -f
EOF

cat >"$root/scenario.sh" <<'EOF'
# Runs inside the guest. One "V2CHECK <name> PASS|FAIL <detail>" line each.
check() {
    name=$1 ok=$2
    shift 2
    if [ "$ok" = 0 ]; then r=PASS; else r=FAIL; fi
    echo "V2CHECK $name $r $*"
}
field() { # field FILE KEY -> value of "KEY": value (first match)
    sed -n "s/.*\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n 1
}
section() { echo; echo "=== $* ==="; }
# A hung run must cost one check, not the rest of the scenario.
stockade() { timeout 60 /usr/bin/stockade "$@"; }

section doctor
stockade doctor >/tmp/doctor.out 2>&1
echo "doctor exit $?"
cat /tmp/doctor.out
cg=$(grep cgroups /tmp/doctor.out)
case "$cg" in
*"v2 at"*) check doctor 0 "$cg" ;;
*) check doctor 1 "cgroups line: $cg" ;;
esac

section hello
out=$(stockade run -- sh -c 'echo hello' 2>/tmp/hello.err)
rc=$?
cat /tmp/hello.err
[ "$out" = hello ] && [ $rc = 0 ]
check hello $? "exit=$rc stdout=$out"

section memory
rm -f /tmp/mem.json
# dd fills a 200 MiB buffer from /dev/zero: anonymous memory in the group.
stockade run --memory 32M --report /tmp/mem.json -- \
    sh -c 'dd if=/dev/zero of=/dev/null bs=200M count=1; echo survived'
rc=$?
cat /tmp/mem.json 2>/dev/null
outcome=$(field /tmp/mem.json outcome)
[ $rc = 137 ] && [ "$outcome" = memory-limit ]
check memory $? "exit=$rc outcome=$outcome"

section pids
rm -f /tmp/pids.json
stockade run --pids 16 --report /tmp/pids.json -- \
    sh -c 'for i in $(seq 40); do sleep 5 & done; wait'
rc=$?
cat /tmp/pids.json 2>/dev/null
grep -q '"kind": *"pids-limit"' /tmp/pids.json 2>/dev/null
check pids $? "exit=$rc kinds=$(grep -o '"kind": *"[^"]*"' /tmp/pids.json 2>/dev/null | tr '\n' ' ')"

section cpu
rm -f /tmp/cpu.json
stockade run --cpus 0.25 --timeout 2s --report /tmp/cpu.json -- sh -c 'while :; do :; done'
rc=$?
cat /tmp/cpu.json 2>/dev/null
cpu=$(field /tmp/cpu.json cpu_seconds)
wall=$(field /tmp/cpu.json wall_seconds)
awk -v c="${cpu:-0}" -v w="${wall:-0}" 'BEGIN { exit !(c > 0 && w > 0 && c < 0.6 * w) }'
check cpu $? "exit=$rc cpu_seconds=$cpu wall_seconds=$wall"

section timeout
stockade run --timeout 1s -- sleep 10
rc=$?
[ $rc = 124 ]
check timeout $? "exit=$rc"

section cleanup
sleep 1
groups=$(find /sys/fs/cgroup/stockade -mindepth 1 -maxdepth 1 -type d 2>/dev/null | tr '\n' ' ')
boxes=$(ls -A /var/lib/stockade/sandboxes 2>/dev/null | tr '\n' ' ')
echo "cgroup tree:"; find /sys/fs/cgroup/stockade -maxdepth 2 -type d 2>/dev/null
echo "state dir:"; ls -la /var/lib/stockade /var/lib/stockade/sandboxes 2>&1
[ -d /sys/fs/cgroup/stockade ] && [ -z "$groups" ] && [ -z "$boxes" ]
check cleanup $? "cgroups=[${groups% }] sandboxes=[${boxes% }]"

section version
# Which driver stockade picked, from doctor, against what the guest has.
# (busybox stat -f cannot name cgroup2, hence /proc/mounts and the magic)
fs="$(awk '$2 == "/sys/fs/cgroup" { print $3 }' /proc/mounts) magic=$(stat -f -c %t /sys/fs/cgroup)"
case "$cg" in
*"v2 at /sys/fs/cgroup"*) [ "$fs" = "cgroup2 magic=63677270" ] ;;
*) false ;;
esac
check version $? "stockade=$(echo "$cg" | sed 's/.*cgroups *//') fs=$fs subtree_control=$(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"

# Rootless: user rl with a delegated subtree, as systemd's user@.service
# gives one: the directory and its cgroup.procs, cgroup.threads and
# cgroup.subtree_control are rl's (its own limits are not), and rl's
# shell already runs in a leaf below it (the kernel lets a user move a
# process only between cgroups under one it may write).
section rootless
d=/sys/fs/cgroup/user-rl
mkdir -p $d/shell /tmp/rl
echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
echo "+memory +pids +cpu" >$d/cgroup.subtree_control
chown 1000:1000 $d $d/cgroup.procs $d/cgroup.threads $d/cgroup.subtree_control /tmp/rl
chown -R 1000:1000 $d/shell
echo $$ >$d/shell/cgroup.procs
cat >/tmp/rl/env.sh <<EOS
export STOCKADE_CGROUP_ROOT=$d STOCKADE_STATE_DIR=/tmp/rl/state HOME=/tmp/rl PATH=/usr/bin
EOS
cat >/tmp/rl/hello.sh <<'EOS'
. /tmp/rl/env.sh
timeout 60 stockade run -- sh -c 'echo "uid $(id -u)"; grep -E "^(CapEff|Seccomp):" /proc/self/status'
EOS
out=$(su rl -s /bin/sh /tmp/rl/hello.sh 2>/tmp/rl/hello.err)
rc=$?
cat /tmp/rl/hello.err; echo "$out"
echo "$out" | grep -q "uid 1000" && echo "$out" | grep -q "CapEff:.0000000000000000" &&
    echo "$out" | grep -q "Seccomp:.2" && [ $rc = 0 ] && grep -q "by the kernel: cpu, memory, processes" /tmp/rl/hello.err
check rootless-hello $? "exit=$rc $(echo $out)"

# The same user without STOCKADE_CGROUP_ROOT: stockade finds the subtree
# it runs in (the topmost ancestor of its own cgroup that is rl's, as
# systemd's user@UID.service is) and the kernel enforces the limits.
cat >/tmp/rl/auto.sh <<'EOS'
export STOCKADE_STATE_DIR=/tmp/rl/state HOME=/tmp/rl PATH=/usr/bin
timeout 60 stockade run --memory 64M -- sh -c 'cat /proc/self/cgroup'
EOS
out=$(su rl -s /bin/sh /tmp/rl/auto.sh 2>/tmp/rl/auto.err)
rc=$?
cat /tmp/rl/auto.err; echo "$out"
[ $rc = 0 ] && grep -q "by the kernel: cpu, memory, processes" /tmp/rl/auto.err
check rootless-auto-delegation $? "exit=$rc $(echo $out)"

cat >/tmp/rl/memory.sh <<'EOS'
. /tmp/rl/env.sh
timeout 60 stockade run --memory 32M --report /tmp/rl/mem.json -- sh -c 'dd if=/dev/zero of=/dev/null bs=200M count=1; echo survived'
EOS
su rl -s /bin/sh /tmp/rl/memory.sh
rc=$?
cat /tmp/rl/mem.json 2>/dev/null
outcome=$(field /tmp/rl/mem.json outcome)
[ $rc = 137 ] && [ "$outcome" = memory-limit ]
check rootless-memory $? "exit=$rc outcome=$outcome"

cat >/tmp/rl/pids.sh <<'EOS'
. /tmp/rl/env.sh
timeout 60 stockade run --pids 16 --report /tmp/rl/pids.json -- sh -c 'for i in $(seq 40); do sleep 5 & done; wait'
EOS
su rl -s /bin/sh /tmp/rl/pids.sh
rc=$?
cat /tmp/rl/pids.json 2>/dev/null
grep -q '"kind": *"pids-limit"' /tmp/rl/pids.json 2>/dev/null
check rootless-pids $? "exit=$rc kinds=$(grep -o '"kind": *"[^"]*"' /tmp/rl/pids.json 2>/dev/null | tr '\n' ' ')"

cat >/tmp/rl/cpu.sh <<'EOS'
. /tmp/rl/env.sh
timeout 60 stockade run --cpus 0.25 --timeout 2s --report /tmp/rl/cpu.json -- sh -c 'while :; do :; done'
EOS
su rl -s /bin/sh /tmp/rl/cpu.sh
rc=$?
cat /tmp/rl/cpu.json 2>/dev/null
cpu=$(field /tmp/rl/cpu.json cpu_seconds)
wall=$(field /tmp/rl/cpu.json wall_seconds)
awk -v c="${cpu:-0}" -v w="${wall:-0}" 'BEGIN { exit !(c > 0 && w > 0 && c < 0.6 * w) }'
check rootless-cpu $? "exit=$rc cpu_seconds=$cpu wall_seconds=$wall"

sleep 1
groups=$(find $d/stockade -mindepth 1 -maxdepth 1 -type d 2>/dev/null | tr '\n' ' ')
boxes=$(ls -A /tmp/rl/state/sandboxes 2>/dev/null | tr '\n' ' ')
[ -d $d/stockade ] && [ -z "$groups" ] && [ -z "$boxes" ]
check rootless-cleanup $? "cgroups=[${groups% }] sandboxes=[${boxes% }]"

# OCI runtime: stockade-runc driven as an engine drives it, on a bundle
# made here from the guest's busybox and a config.json from
# `stockade-runc spec`, edited. The guest's / is a tmpfs, which cannot be
# id-mapped on this kernel (tmpfs has id-mapped mounts from 6.3), so the
# config maps the container's ids onto 100000-165535 and the rootfs is
# owned by 100000, as podman's --userns makes it: stockade then uses it
# as it is.
section oci
echo $$ >/sys/fs/cgroup/cgroup.procs # out of the rootless user's subtree
runc() { timeout 60 /usr/bin/stockade-runc --root /tmp/oci/state "$@"; }
mkdir -p /tmp/oci/rootfs/bin /tmp/oci/rootfs/proc /tmp/oci/rootfs/dev /tmp/oci/rootfs/sys /tmp/oci/rootfs/tmp
cp /usr/bin/busybox /tmp/oci/rootfs/bin/busybox
for a in sh sleep dd; do ln -s busybox /tmp/oci/rootfs/bin/$a; done
chown -R 100000:100000 /tmp/oci/rootfs
(cd /tmp/oci && /usr/bin/stockade-runc spec && mv config.json spec.json)
ids='[{"containerID": 0, "hostID": 100000, "size": 65536}]'
# mkbundle NAME CGROUPS_PATH RESOURCES CMD: /tmp/oci/NAME/config.json
# (sed edits of spec's output; RESOURCES is the members to add to
# linux.resources, each followed by a comma).
mkbundle() {
    mkdir -p /tmp/oci/$1
    cmd=$(printf '%s' "$4" | sed 's/[&#\\]/\\&/g')
    sed -e 's#"terminal": true#"terminal": false#' \
        -e 's#"path": "rootfs"#"path": "/tmp/oci/rootfs"#' \
        -e "s#^\( *\)\"sh\"\$#\1\"sh\", \"-c\", \"$cmd\"#" \
        -e "s#\"resources\": {#\"resources\": {$3#" \
        -e "s#\"namespaces\": \[#\"cgroupsPath\": \"$2\", \"uidMappings\": $ids, \"gidMappings\": $ids, \"namespaces\": [#" \
        /tmp/oci/spec.json >/tmp/oci/$1/config.json
    grep -q "\"cgroupsPath\": \"$2\"" /tmp/oci/$1/config.json &&
        grep -q '"sh", "-c"' /tmp/oci/$1/config.json ||
        echo "mkbundle $1: the edit of spec's config.json did not apply"
}
# stopped ID: waits (bounded) until the container's init is gone.
stopped() {
    for _ in $(seq 100); do
        runc state $1 2>/dev/null | grep -q '"status": *"stopped"' && return 0
        sleep 0.2
    done
    return 1
}

# run -d with linux.resources and a cgroupfs cgroupsPath.
mkbundle c1 /ociv2/c1 '"memory": {"limit": 67108864, "swap": 67108864}, "pids": {"limit": 32}, "cpu": {"quota": 25000, "period": 100000},' 'sleep 60'
runc run -d --bundle /tmp/oci/c1 c1 </dev/null >/tmp/oci/c1.out 2>&1
rc=$?
cat /tmp/oci/c1.out
runc state c1 >/tmp/oci/c1.state
pid=$(field /tmp/oci/c1.state pid)
cg=$(cat /proc/${pid:-0}/cgroup 2>/dev/null)
[ $rc = 0 ] && [ "$cg" = "0::/ociv2/c1" ]
check oci-cgroup $? "exit=$rc pid=$pid cgroup=$cg"
d=/sys/fs/cgroup/ociv2/c1
mem=$(cat $d/memory.max 2>&1) swap=$(cat $d/memory.swap.max 2>&1)
pids=$(cat $d/pids.max 2>&1) cpu=$(cat $d/cpu.max 2>&1)
[ "$mem" = 67108864 ] && [ "$swap" = 0 ] && [ "$pids" = 32 ] && [ "$cpu" = "25000 100000" ]
check oci-limits $? "memory.max=$mem memory.swap.max=$swap pids.max=$pids cpu.max=$cpu"
# update and pause/resume act on the same cgroup.
echo '{"pids": {"limit": 48}, "cpu": {"quota": 50000}}' >/tmp/oci/c1.update
runc update --resources /tmp/oci/c1.update c1
rc=$?
upids=$(cat $d/pids.max 2>&1) ucpu=$(cat $d/cpu.max 2>&1)
runc pause c1
s1=$(runc state c1 | grep -o '"status": *"[a-z]*"') f1=$(cat $d/cgroup.freeze 2>&1)
runc resume c1
s2=$(runc state c1 | grep -o '"status": *"[a-z]*"') f2=$(cat $d/cgroup.freeze 2>&1)
[ $rc = 0 ] && [ "$upids" = 48 ] && [ "$ucpu" = "50000 100000" ] &&
    [ "$s1" = '"status": "paused"' ] && [ "$f1" = 1 ] && [ "$s2" = '"status": "running"' ] && [ "$f2" = 0 ]
check oci-update-pause $? "update=$rc pids.max=$upids cpu.max=$ucpu paused=[$s1 freeze=$f1] resumed=[$s2 freeze=$f2]"
runc kill c1 KILL && stopped c1 && runc delete c1
rc=$?
[ $rc = 0 ] && [ ! -e $d ]
check oci-run-delete $? "exit=$rc cgroup left: $(ls -d $d 2>/dev/null)"

# A fork bomb under pids.limit 16: only the limit holds it. Each shell
# that meets a refused fork exits, and init (sleep) reaps nobody, so the
# bomb ends as 15 zombies holding their pids (pids.current counts them,
# cgroup.procs and the report's sampled pids_peak do not); the container
# keeps running at the limit until delete --force.
mkbundle c2 /ociv2/c2 '"pids": {"limit": 16},' 'b() { while :; do b & done; }; b & exec sleep 60'
runc run -d --bundle /tmp/oci/c2 c2 </dev/null >/tmp/oci/c2.out 2>&1
rc=$?
d=/sys/fs/cgroup/ociv2/c2
for _ in $(seq 100); do
    [ "$(sed -n 's/^max //p' $d/pids.events 2>/dev/null)" -gt 0 ] 2>/dev/null && break
    sleep 0.1
done
now=""
for _ in 1 2 3 4 5; do now="$now $(cat $d/pids.current 2>/dev/null)"; sleep 0.1; done
refused=$(sed -n 's/^max //p' $d/pids.events 2>/dev/null)
st=$(runc state c2 | grep -o '"status": *"[a-z]*"')
runc delete --force c2
del=$?
cat /tmp/oci/state/.reports/c2.json 2>/dev/null; echo
peak=$(field /tmp/oci/state/.reports/c2.json pids_peak)
over=$(for n in $now; do [ "$n" -le 16 ] || echo "$n"; done)
[ $rc = 0 ] && [ "${refused:-0}" -gt 0 ] && [ -z "$over" ] && [ -n "${now# }" ] &&
    [ "$st" = '"status": "running"' ] && [ $del = 0 ] && [ ! -e $d ] && [ "${peak:-99}" -le 16 ] &&
    grep -q '"kind": *"pids-limit"' /tmp/oci/state/.reports/c2.json
check oci-pids $? "exit=$rc pids.current=[${now# }] pids.events max=$refused $st delete=$del pids_peak=$peak kinds=$(grep -o '"kind": *"[^"]*"' /tmp/oci/state/.reports/c2.json 2>/dev/null | tr '\n' ' ')"

# Over the memory limit (no swap allowed): init itself allocates (as
# with runc, the OOM killer takes the largest process, not the whole
# group), is OOM-killed and reported.
mkbundle c3 /ociv2/c3 '"memory": {"limit": 33554432, "swap": 33554432},' 'exec dd if=/dev/zero of=/dev/null bs=200M count=1'
runc run --bundle /tmp/oci/c3 c3 </dev/null
rc=$?
cat /tmp/oci/state/.reports/c3.json 2>/dev/null; echo
outcome=$(field /tmp/oci/state/.reports/c3.json outcome)
[ $rc = 137 ] && [ "$outcome" = memory-limit ]
check oci-memory $? "exit=$rc outcome=$outcome"

# create/start/state/kill/delete with the systemd form, which maps to
# /system.slice/stockade-c4.scope made in cgroupfs.
mkbundle c4 system.slice:stockade:c4 '"pids": {"limit": 20},' 'sleep 60'
runc --systemd-cgroup create --bundle /tmp/oci/c4 --pid-file /tmp/oci/c4.pid c4 </dev/null >/tmp/oci/c4.out 2>&1
rc=$?
cat /tmp/oci/c4.out
pid=$(cat /tmp/oci/c4.pid 2>/dev/null)
cg=$(cat /proc/${pid:-0}/cgroup 2>/dev/null)
d=/sys/fs/cgroup/system.slice/stockade-c4.scope
s1=$(runc state c4 | grep -o '"status": *"[a-z]*"')
runc start c4
s2=$(runc state c4 | grep -o '"status": *"[a-z]*"')
spids=$(cat $d/pids.max 2>&1)
runc kill c4 9 && stopped c4 && runc delete c4
rc2=$?
[ $rc = 0 ] && [ "$cg" = "0::/system.slice/stockade-c4.scope" ] && [ "$spids" = 20 ] &&
    [ "$s1" = '"status": "created"' ] && [ "$s2" = '"status": "running"' ] &&
    [ $rc2 = 0 ] && [ ! -e $d ] && [ -d /sys/fs/cgroup/system.slice ]
check oci-systemd $? "create=$rc cgroup=$cg pids.max=$spids states=[$s1 $s2] kill+delete=$rc2 scope left: $(ls -d $d 2>/dev/null)"

# A limit the kernel cannot apply is refused, not skipped: under a
# parent with a process of its own, cgroup v2 will not delegate the
# memory controller (no internal processes), so c5 would have no
# memory.max. create fails, naming the controller, and leaves nothing
# (not /busy/mid either, which it made on the way).
mkdir -p /sys/fs/cgroup/busy
sleep 60 &
busy=$!
echo $busy >/sys/fs/cgroup/busy/cgroup.procs
mkbundle c5 /busy/mid/c5 '"memory": {"limit": 33554432},' 'sleep 60'
runc create --bundle /tmp/oci/c5 --pid-file /tmp/oci/c5.pid c5 </dev/null >/tmp/oci/c5.out 2>&1
rc=$?
cat /tmp/oci/c5.out
kill $busy; wait $busy 2>/dev/null
[ $rc != 0 ] && grep -q "memory controller" /tmp/oci/c5.out && [ ! -e /sys/fs/cgroup/busy/mid ] &&
    [ ! -e /tmp/oci/state/c5 ] && [ ! -e /tmp/oci/c5.pid ]
check oci-missing-controller $? "exit=$rc left: $(ls -d /sys/fs/cgroup/busy/mid /tmp/oci/state/c5 2>/dev/null)"
rmdir /sys/fs/cgroup/busy

# Nothing left: no container cgroup, no state directory.
left=$(find /sys/fs/cgroup/ociv2 /sys/fs/cgroup/system.slice -mindepth 1 -type d 2>/dev/null | tr '\n' ' ')
states=$(ls /tmp/oci/state 2>/dev/null | tr '\n' ' ')
[ -z "$left" ] && [ -z "$states" ] && [ -d /sys/fs/cgroup/ociv2 ]
check oci-cleanup $? "cgroups=[${left% }] states=[${states% }]"
EOF
if [ -n "${STOCKADE_QEMU_SCENARIO:-}" ]; then
    cp "$STOCKADE_QEMU_SCENARIO" "$root/scenario.sh"
fi
if [ "$cgroup_mode" = v1 ]; then
    touch "$root/cgroup-v1"
fi
# Optional extra guest script for investigating, run after the checks.
if [ -n "${STOCKADE_QEMU_EXTRA:-}" ]; then
    cp "$STOCKADE_QEMU_EXTRA" "$root/extra.sh"
fi
chmod 755 "$root/init" "$root/stage2"

# Host cpio if there is one, else busybox's (which has no --quiet).
if command -v cpio >/dev/null; then cpio=(cpio --quiet); else cpio=("$busybox" cpio); fi
(cd "$root" && find . | "${cpio[@]}" -o -H newc) | gzip -1 >"$work/initrd.gz"

# --- boot -----------------------------------------------------------------
log=$work/console.log
start=$(date +%s)
set +e
timeout 300 qemu-system-x86_64 -M pc,accel=tcg -cpu max -smp 2 -m 1024 \
    -kernel "$kernel" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet" \
    -nographic -no-reboot -nic none -monitor none -serial stdio </dev/null |
    tr -d '\r' | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
echo "run.sh: qemu exited $qemu_rc after $(($(date +%s) - start))s (kernel $(cat "$cache/kernel-version" 2>/dev/null || echo "$kernel"))"

failed=0
for c in $checks; do
    line=$(grep "^V2CHECK $c " "$log" | head -n 1 || true)
    case "$line" in
    "V2CHECK $c PASS"*) ;;
    "") echo "run.sh: check $c missing"; failed=1 ;;
    *) echo "run.sh: check $c failed: $line"; failed=1 ;;
    esac
done
if grep -q '^V2CHECK .* FAIL' "$log"; then
    failed=1
fi
[ "$qemu_rc" = 124 ] && { echo "run.sh: guest timed out"; failed=1; }
if [ $failed = 0 ]; then
    echo "run.sh: all cgroup v2 checks passed"
fi
exit $failed
