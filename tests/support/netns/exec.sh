#!/usr/bin/env bash
# exec.sh PREFIX HOST CMD... — runs CMD "on" host HOST of up.sh PREFIX: in its network namespace,
# with its /etc/hosts and, in a private UTS namespace, hostname HOST.
set -euo pipefail
P=$1; h=$2; shift 2
exec ip netns exec "$P-$h" unshare --uts /bin/sh -c 'hostname "$0"; exec "$@"' "$h" "$@"
