#!/usr/bin/env bash
# down.sh PREFIX — removes what up.sh PREFIX made: the processes inside its namespaces (found by
# namespace, so only ours), the namespaces, /etc/netns entries and /run/PREFIX-ssh.
set -uo pipefail
P=$1
[ "$(id -u)" = 0 ] || { echo "down.sh: must run as root" >&2; exit 1; }
for ns in $(ip netns list | awk '{print $1}' | grep -E "^$P-(sw|h[0-9]+)$"); do
  pids=$(ip netns pids "$ns" 2>/dev/null)
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null
    for _ in $(seq 30); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
    pids=$(ip netns pids "$ns" 2>/dev/null); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  fi
  ip netns del "$ns"
  rm -rf "/etc/netns/$ns"
done
rmdir /etc/netns 2>/dev/null
rm -rf "/run/$P-ssh"
exit 0
