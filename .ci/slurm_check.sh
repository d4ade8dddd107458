#!/usr/bin/env bash
# Prove the SLURM profile against a real one-node SLURM cluster on this machine (no fake sbatch):
#  1. install Debian's slurmctld/slurmd/slurm-client/munge (skipped if present), start munged,
#     slurmctld and slurmd from a throw-away slurm.conf (facts: docs in shared/docs/cluster.md);
#  2. run a tiny demo-like study locally, then the same study with --profile profiles/slurm-cpu;
#  3. check that every job was submitted to SLURM and finished COMPLETED there (squeue
#     --states=all, the executor's kept logs), and that both metrics.csv files are identical;
#  4. stop the daemons it started, by their pid files.
# Needs root and apt (CI: a Debian machine). Exits non-zero on any failure; every wait has a timeout.
# Usage: .ci/slurm_check.sh   (MIMPROBE_BIN=/path/to/venv/bin to use another environment)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MIMPROBE_BIN:-$REPO/.venv/bin}
WORK=$(mktemp -d /tmp/mimprobe-slurm.XXXXXX)
STATE=$WORK/slurm
# slurmd hands batch jobs no SLURM_CONF, so `srun` inside a job reads the default path: use it
# (an existing file is moved aside and put back at the end).
CONF=/etc/slurm/slurm.conf
STARTED_PIDFILES=()
CONF_BACKUP=

say() { echo "[slurm-check ${SECONDS}s] $*"; }
fail() { echo "[slurm-check] FAIL: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out waiting for $what"
        sleep 1
    done
}

stop_pidfile() {  # SIGTERM the daemon named in a pid file, SIGKILL it after 20 s
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    for ((i = ${#STARTED_PIDFILES[@]} - 1; i >= 0; i--)); do stop_pidfile "${STARTED_PIDFILES[i]}"; done
    if [[ -n $CONF_BACKUP ]]; then mv -f "$CONF_BACKUP" "$CONF"; elif [[ -f $STATE/conf-written ]]; then rm -f "$CONF"; fi
    if ((rc != 0)); then
        say "logs kept in $WORK"
        tail -n 30 "$STATE"/*.log 2>/dev/null || true
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # so that a timeout still runs cleanup (after the current command)

[[ $(id -u) == 0 ]] || fail "needs root (it installs and starts SLURM daemons)"
[[ -x $BIN/snakemake ]] || fail "$BIN/snakemake missing: run 'make test' first (or set MIMPROBE_BIN)"

# --- 1. install and start a one-node cluster ------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts

if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
    say "munged already running: using it"
else
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [[ -s /etc/munge/munge.key ]] || fail "/etc/munge/munge.key missing (the munge package creates it)"
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    STARTED_PIDFILES+=(/run/munge/munged.pid)
    wait_for 20 munged bash -c 'munge -n </dev/null'
fi

mkdir -p "$STATE/ctld" "$STATE/spool"
CPUS=$(nproc)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mkdir -p "$(dirname "$CONF")"
if [[ -f $CONF ]]; then CONF_BACKUP=$WORK/slurm.conf.orig; cp -p "$CONF" "$CONF_BACKUP"; fi
touch "$STATE/conf-written"
cat >"$CONF" <<EOF
ClusterName=mimprobe-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# squeue must still list finished jobs when the executor asks (>= 3 x its first status delay, > 180 s)
MinJobAge=600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
NodeName=$HOST CPUs=$CPUS RealMemory=$((MEM * 8 / 10)) State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
say "starting slurmctld and slurmd ($CPUS CPUs, $((MEM * 8 / 10)) MB)"
slurmctld -f "$CONF"
STARTED_PIDFILES+=("$STATE/slurmctld.pid")
wait_for 30 slurmctld test -s "$STATE/slurmctld.pid"
slurmd -f "$CONF"
STARTED_PIDFILES+=("$STATE/slurmd.pid")
wait_for 30 slurmd test -s "$STATE/slurmd.pid"
wait_for 60 "the node to be idle" bash -c 'sinfo -h -o %T | grep -qx idle'
timeout 60 srun -t 1 hostname >/dev/null || fail "srun hostname did not answer"

# --- 2. the same tiny study locally and through SLURM ---------------------------------------
cat >"$WORK/config.yaml" <<'EOF'
seed: 0
datasets:
  digits: {kind: digits, shard_size: 64, limit: {train: 128, test: 64}}
backbones:
  random_vit: {model: "random:vit_tiny_patch16_224", batch_size: 64}
features: {blocks: [-1], pooling: [cls, mean]}
probes:
  knn: {k: [5, 10]}
  linear: {learning_rates: [0.01, 0.1], epochs: 3}
report: {bootstrap: 20}
EOF
SMK=("$BIN/snakemake" -s "$REPO/Snakefile" --configfile "$WORK/config.yaml")

# The SLURM run mostly waits on the scheduler and status polls: the local run fills that time.
say "local run (in the background) and SLURM run (--profile profiles/slurm-cpu)"
mkdir -p "$WORK/local" "$WORK/slurm-run"
timeout 600 "${SMK[@]}" -d "$WORK/local" --cores 1 >"$WORK/local.log" 2>&1 &
LOCAL_PID=$!
timeout 600 "${SMK[@]}" -d "$WORK/slurm-run" --profile "$REPO/profiles/slurm-cpu" >"$WORK/slurm-run.log" 2>&1 \
    || { tail -n 60 "$WORK/slurm-run.log"; wait "$LOCAL_PID" || true; fail "SLURM run failed"; }
say "SLURM run finished"
wait "$LOCAL_PID" || { tail -n 40 "$WORK/local.log"; fail "local run failed"; }
say "local run finished"

# --- 3. evidence ----------------------------------------------------------------------------
LOG=$WORK/slurm-run.log
# Jobs Snakemake planned, except `all` (it has no command and never leaves the login node).
PLANNED=$(awk '/^Job stats:/{s=1} s && $1=="total"{print $2; exit}' "$LOG")
mapfile -t IDS < <(grep -o "SLURM jobid [0-9]*" "$LOG" | awk '{print $3}' | sort -un)
say "planned $PLANNED jobs (incl. 'all'); submitted ${#IDS[@]} SLURM jobs: ${IDS[*]}"
[[ -n $PLANNED && ${#IDS[@]} -eq $((PLANNED - 1)) ]] || fail "expected $((PLANNED - 1)) SLURM jobs, saw ${#IDS[@]}"
squeue --states=all -h -o '%i %T %k' >"$WORK/squeue.txt"
for id in "${IDS[@]}"; do
    state=$(awk -v id="$id" '$1==id{print $2}' "$WORK/squeue.txt")
    [[ $state == COMPLETED ]] || fail "SLURM job $id is '${state:-unknown}', expected COMPLETED"
    find "$WORK/slurm-run/.snakemake/slurm_logs" -name "$id.log" | grep -q . \
        || fail "no executor log .snakemake/slurm_logs/**/$id.log for SLURM job $id"
done
RULES=$(awk '$3 ~ /^rule_/ {print $3}' "$WORK/squeue.txt" | sed 's/^rule_//; s/_wildcards.*//' | sort | uniq -c | tr -s ' \n' ' ')
say "all ${#IDS[@]} jobs COMPLETED under SLURM (by rule:$RULES)"

cmp "$WORK/local/results/report/metrics.csv" "$WORK/slurm-run/results/report/metrics.csv" \
    || fail "metrics.csv differs between the local and the SLURM run"
say "metrics.csv identical to the local run's ($(wc -l <"$WORK/local/results/report/metrics.csv") lines)"
say "PASS in ${SECONDS}s"
