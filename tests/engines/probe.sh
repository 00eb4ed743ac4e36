#!/bin/sh
# Isolation probes run inside a container (busybox sh), as the end-to-end
# suite runs them inside stockade sandboxes. Prints key=value lines; the
# test (crates/stockade-cli/tests/oci_engines.rs) decides what they must be.
#   probe.sh HOST_MARKER_PATH
marker=$1
echo "capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
echo "seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' /proc/self/status)"
# The initial user namespace maps all 2^32 ids onto themselves.
echo "uid_map=$(head -n1 /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
if [ -e "$marker" ] || cat "$marker" >/dev/null 2>&1; then
  echo "host_marker=visible"
else
  echo "host_marker=absent"
fi
# No process's executable may be opened for writing (CVE-2019-5736: a
# container rewriting the runtime binary through /proc/PID/exe).
writable=""
for p in /proc/[0-9]*; do
  if (: >>"$p/exe") 2>/dev/null; then
    writable="$writable ${p#/proc/}"
  fi
done
echo "exe_writable=${writable:-none}"
# pids limit: a child shell forks 60 background sleeps until it cannot
# (ash exits when a fork fails); then count the processes there are,
# without forking (the limit may be reached).
sh -c 'i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i + 1)); done' 2>/dev/null
set -- /proc/[0-9]*
echo "processes=$#"
echo "done=1"
