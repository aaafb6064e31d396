#!/usr/bin/env bash
# slurm-local-down.sh: stops what tests/support/slurm-local-up.sh started (by pid file only,
# never by name), cancels its jobs, removes its state folder. Safe to run when nothing is up.
# Derived from the project's recipe (../shared/recipes/slurm-local-down.sh).
set -uo pipefail
STATE=${SLURM_LOCAL_STATE:-/run/shoal-slurm-test}
CONF=$STATE/slurm.conf
[ "$(id -u)" = 0 ] || { echo "slurm-local-down: must run as root" >&2; exit 1; }

# SIGTERM every pid whose pid file we wrote (and whose command still matches), all at once
# (each daemon needs ~2 s to exit), wait up to 15 s, then SIGKILL the rest.   args: comm:pidfile ...
stop_pids() {
  local spec comm f pid pids=()
  for spec in "$@"; do
    comm=${spec%%:*}; f=${spec#*:}
    [ -s "$f" ] || continue
    pid=$(cat "$f"); rm -f "$f"
    if [ -z "$pid" ] || [ "$(ps -o comm= -p "$pid" 2>/dev/null)" != "$comm" ]; then continue; fi
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && echo "stopping $comm (pid $pid)"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for _ in $(seq 150); do
    local alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { echo "SIGKILL $pid"; kill -KILL "$pid"; }; done
  return 0
}

if [ -d "$STATE/run" ]; then
  export SLURM_CONF=$CONF
  # cancel our jobs first so that slurmd cleans up their steps (ctld may be gone: ignore errors)
  if [ -s "$STATE/run/slurmctld.pid" ] && [ -e "$CONF" ] && timeout 5 scontrol ping 2>/dev/null | grep -q UP; then
    timeout 10 scancel --quiet --user=root 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  specs=()
  [ -e "$STATE/run/slurmd.pid" ] && specs+=("slurmd:$STATE/run/slurmd.pid")
  specs+=("slurmctld:$STATE/run/slurmctld.pid")
  [ -s "$STATE/run/munged.pid.ours" ] && specs+=("munged:$STATE/run/munged.pid.ours")
  stop_pids "${specs[@]}"
  # leftover slurmstepd of ours (they can outlive slurmd): ours have a file under $STATE open
  for p in $(pgrep -x slurmstepd 2>/dev/null); do
    for fd in /proc/"$p"/fd/*; do
      case $(readlink "$fd" 2>/dev/null) in
        "$STATE"/*) echo "killing leftover slurmstepd $p"; kill -KILL "$p" 2>/dev/null; break ;;
      esac
    done
  done
fi
rm -rf "$STATE"
echo "slurm-local: down, $STATE removed"
exit 0
