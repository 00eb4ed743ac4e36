#!/bin/bash
# What init joining its cgroup itself buys on a default cgroup v1 host.
#
# On cgroup v1 a process moved into a group by another (a pid written to
# cgroup.procs) makes the kernel take its global threadgroup lock for
# writing, which on a quiet host first waits for an RCU grace period. A
# thread that writes 0 to the group's `tasks` file moves only itself and
# skips that lock; stockade's init does so (see
# crates/stockade-isolate/src/launch.rs). Hosts whose cgroups ran in
# favordynmods mode once (like the machine benches/RESULTS.md comes from)
# no longer show the difference, so this boots a Debian kernel with default
# settings under QEMU (tests/cgroup-v2/run.sh with cgroup v1 hierarchies)
# and times `stockade run -- true` both ways, interleaved, 0.5 s apart
# (a quiet host between sandboxes). QEMU emulates the CPU in software:
# absolute times are many times a real host's; compare the two variants.
#
# Usage: benches/cgroup-v1-attach.sh [path/to/stockade] [rounds]
# Prints a Markdown table; needs what tests/cgroup-v2/run.sh needs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bin=${1:-$repo/target/$(rustc -vV | sed -n 's/^host: //p')/release/stockade}
rounds=${2:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/scenario.sh" <<SCENARIO
for i in \$(seq 1 $rounds); do
  for how in move self; do
    sleep 0.5
    if [ \$how = move ]; then flag=--v1-attach-by-move; else flag=; fi
    timeout 60 /usr/bin/stockade run \$flag --report /tmp/r.json -- true
    rc=\$?
    w=\$(sed -n 's/.*"wall_seconds": *\([0-9.e-]*\).*/\1/p' /tmp/r.json)
    echo "V1ATTACH \$how \$rc \$w"
  done
done
SCENARIO

STOCKADE_QEMU_CGROUP=v1 STOCKADE_QEMU_SCENARIO="$work/scenario.sh" \
    "$repo/tests/cgroup-v2/run.sh" "$bin" >"$work/console.log" 2>&1 || {
    cat "$work/console.log" >&2
    exit 1
}
kernel=$(grep -o 'guest: [^,]*' "$work/console.log" | head -n 1 | cut -d' ' -f2)
grep '^V1ATTACH ' "$work/console.log" | python3 -c '
import statistics, sys
kernel = sys.argv[1]
samples = {"move": [], "self": []}
failed = {"move": 0, "self": 0}
for line in sys.stdin:
    _, how, rc, wall = (line.split() + [""])[:4]
    if rc != "0" or not wall:
        failed[how] += 1
        continue
    samples[how].append(float(wall) * 1000)
print(f"guest kernel {kernel}, cgroup v1, QEMU TCG; `stockade run --report R -- true`, wall_seconds from the report")
print()
print("| init joins its cgroup | runs | failed | median ms | min ms | max ms |")
print("|---|---|---|---|---|---|")
names = {"move": "moved by the supervisor (cgroup.procs)", "self": "by itself (0 to tasks)"}
for how in ("move", "self"):
    s = samples[how]
    if s:
        print(f"| {names[how]} | {len(s)} | {failed[how]} | {statistics.median(s):.1f} | {min(s):.1f} | {max(s):.1f} |")
    else:
        print(f"| {names[how]} | 0 | {failed[how]} | - | - | - |")
if samples["move"] and samples["self"]:
    m, s = statistics.median(samples["move"]), statistics.median(samples["self"])
    print()
    d = m - s
    word = "less" if d >= 0 else "more"
    print(f"Joining itself: {abs(d):.1f} ms {word} per start (median), {s / m:.2f}x the time.")
' "$kernel"
