#!/usr/bin/env bash
# Stop the single-node SLURM cluster that tests/cluster/slurm_up.sh started: every daemon whose
# PID file lies in the state directory, by PID, compute node first and database last. Jobs still
# running are cancelled first. Packages and configuration stay, so the next slurm_up.sh is fast.
#
#     tests/cluster/slurm_down.sh            # stop the daemons
#     tests/cluster/slurm_down.sh --purge    # also delete the state directory (spool, logs, database)
#
# Environment: FA_SLURM_STATE as for slurm_up.sh (default /var/tmp/fa-slurm).
set -euo pipefail

STATE=${FA_SLURM_STATE:-/var/tmp/fa-slurm}
purge=0
case ${1:-} in
    "") ;;
    --purge) purge=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
[[ $EUID -eq 0 ]] || { echo "slurm_down: error: must run as root" >&2; exit 1; }

# stop <name> <comm> <pidfile>: SIGTERM, wait up to 30 s, then SIGKILL.
stop() {
    local name=$1 comm=$2 pidfile=$3 pid t
    [[ -s $pidfile ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -n $pid && -r /proc/$pid/comm && "$(cat "/proc/$pid/comm")" == "$comm" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((t = 0; t < 30; t++)); do
            [[ -e /proc/$pid ]] || break
            sleep 1
        done
        if [[ -e /proc/$pid ]]; then
            kill -KILL "$pid" 2>/dev/null || true
            echo "killed $name $pid"
        else
            echo "stopped $name $pid"
        fi
    fi
    rm -f "$pidfile"
}

if [[ -s $STATE/run/slurmctld.pid ]] && command -v scancel >/dev/null; then
    scancel --full --quiet --user=root 2>/dev/null || true
fi
stop slurmd slurmd "$STATE/run/slurmd.pid"
stop slurmctld slurmctld "$STATE/run/slurmctld.pid"
stop slurmdbd slurmdbd "$STATE/run/slurmdbd.pid"
stop mariadbd mariadbd "$STATE/run/mariadbd.pid"
stop munged munged /run/munge/munged.pid

if ((purge)); then
    rm -rf "$STATE"
    echo "removed $STATE"
fi
