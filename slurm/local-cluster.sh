#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged, slurmctld and slurmd, as root), to try the
# sbatch templates and to test them; see slurm/README.md, "A cluster on one machine".
#
#   slurm/local-cluster.sh start [DIR]    write DIR/slurm.conf, start the daemons, wait for the node
#   slurm/local-cluster.sh status [DIR]   which daemons run; sinfo
#   slurm/local-cluster.sh stop [DIR]     cancel the cluster's jobs, stop the daemons `start` started
#
# DIR (default $HPCNN_SLURM_DIR, else /tmp/hpcnn-slurm) holds everything: slurm.conf, the munge key
# and socket, the controller's state, slurmd's spool, the logs and the pid files. Nothing in /etc
# is read or changed, so the cluster can run beside a system-wide SLURM or munge. Afterwards
#   export SLURM_CONF=DIR/slurm.conf
# points sbatch, srun, squeue, sinfo, scontrol and scancel at it.
#
# Settings (environment): HPCNN_SLURM_PORT (slurmctld's port, default 6817; slurmd uses the next
# one), HPCNN_SLURM_WAIT (seconds to wait for the node to come up, default 30), HPCNN_SLURM_CPUS
# (default: the online CPUs).
# Exit status: 0 done; 1 usage; 3 SLURM or munge is not installed, or this is not root;
# 4 a daemon did not start or the node did not become idle in time (the daemons started are stopped).
set -euo pipefail

action=${1:-}
dir=${2:-${HPCNN_SLURM_DIR:-/tmp/hpcnn-slurm}}
port=${HPCNN_SLURM_PORT:-6817}
wait_s=${HPCNN_SLURM_WAIT:-30}
node=localhost
conf=$dir/slurm.conf
export SLURM_CONF=$conf

say() { echo "local-cluster: $*"; }
fail() { echo "local-cluster: $*" >&2; exit "${2:-4}"; }

# The daemons this script starts, in the order they start (stopped in reverse), with the name
# each has in /proc/PID/comm, so that a stale pid file never makes us signal another process.
daemons=(munged slurmctld slurmd)
pid_file() {
  case $1 in
    munged) echo "$dir/munge/munged.pid" ;;
    *) echo "$dir/$1.pid" ;;
  esac
}

running_pid() {  # print the pid of daemon $1 if it is running (and is that daemon)
  local f pid
  f=$(pid_file "$1")
  [[ -s $f ]] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
  echo "$pid"
}

check_installed() {
  local missing=()
  for cmd in munged mungekey slurmctld slurmd sinfo sbatch srun squeue scontrol scancel; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) || fail "not installed: ${missing[*]} (Debian/Ubuntu: apt-get install slurm-wlm munge)" 3
  [[ $(id -u) == 0 ]] || fail "slurmd and slurmctld run as root here (SlurmUser=root); run as root" 3
}

write_conf() {
  local cpus mem
  # Not nproc: it answers OMP_NUM_THREADS when that is set; slurmd counts the online CPUs.
  cpus=${HPCNN_SLURM_CPUS:-$(getconf _NPROCESSORS_ONLN)}
  # RealMemory must not exceed what slurmd measures, or the node is drained: take 90 % of it.
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat >"$conf" <<EOF
# Written by slurm/local-cluster.sh: a one-node cluster on this machine, everything under $dir.
ClusterName=hpcnn-local
SlurmctldHost=$node
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
# munge authenticates every message; our own munged, key and socket (not /etc/munge)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers often lack them): processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
# Jobs share the node by cores; memory is not a consumable here.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# srun starts MPI ranks through PMI-2 unless a job asks for another --mpi.
MpiDefault=pmi2
# No slurmdbd: no accounting (sacct has no data); finished jobs are written to a text file and
# stay visible to scontrol/squeue for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobs.txt
MinJobAge=600
# A killed job gets SIGTERM, then SIGKILL KillWait seconds later; --requeue'd jobs may be requeued.
KillWait=30
JobRequeue=1
ReturnToService=2
InactiveLimit=0
SlurmdTimeout=300
MessageTimeout=20
NodeName=$node NodeHostname=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

# The node's state without the suffixes of power saving, reboot and maintenance (~ # ! % @ ^ -);
# a trailing * (not responding) is kept, so that only a responding node counts as up.
node_state() { sinfo -h -n "$node" -o %T 2>/dev/null | head -n 1 | tr -d '~#!%$@^-'; }

start() {
  check_installed
  local running=()
  for d in "${daemons[@]}"; do running_pid "$d" >/dev/null && running+=("$d"); done
  ((${#running[@]} == 0)) || fail "already running under $dir: ${running[*]} (stop it first: $0 stop $dir)" 4
  mkdir -p "$dir"/{munge,state,spool,log}
  chmod 700 "$dir" "$dir/munge"
  # munged refuses a key that others may read, and a socket folder that others may write.
  [[ -s $dir/munge/munge.key ]] || mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null
  chmod 600 "$dir/munge/munge.key"
  write_conf

  munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" --force ||
    { stop >/dev/null 2>&1 || true; fail "munged did not start; see $dir/log/munged.log"; }
  # -c: a cold start, ignoring the state of an earlier cluster in the same folder.
  slurmctld -c -f "$conf" ||
    { stop >/dev/null 2>&1 || true; fail "slurmctld did not start; see $dir/log/slurmctld.log"; }
  slurmd -N "$node" -f "$conf" ||
    { stop >/dev/null 2>&1 || true; fail "slurmd did not start; see $dir/log/slurmd.log"; }

  local deadline=$((SECONDS + wait_s)) state=""
  while ((SECONDS < deadline)); do
    state=$(node_state || true)
    case $state in
      idle | mixed | allocated) break ;;
      down | drained | draining) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  case $state in
    idle | mixed | allocated) ;;
    *)
      stop >/dev/null 2>&1 || true
      fail "node $node is not up after ${wait_s} s (state: ${state:-no answer}); see $dir/log/slurmctld.log and slurmd.log"
      ;;
  esac
  say "up: node $node ($(sinfo -h -n "$node" -o '%c CPUs, %m MB')), partition debug; logs in $dir/log"
  echo "export SLURM_CONF=$conf"
}

stop() {
  # Jobs first: their steps run under slurmstepd, which outlives slurmd unless the job ends.
  if running_pid slurmctld >/dev/null; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      local deadline=$((SECONDS + 15))
      while [[ -n $(squeue -h -t running,completing -o %i 2>/dev/null || true) ]] && ((SECONDS < deadline)); do
        sleep 0.5
      done
    fi
  fi
  local i d pid
  for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
    d=${daemons[i]}
    pid=$(running_pid "$d") || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      say "$d (pid $pid) did not stop on SIGTERM: killed"
    else
      say "$d (pid $pid) stopped"
    fi
    rm -f "$(pid_file "$d")"
  done
}

status() {
  local d pid down=0
  for d in "${daemons[@]}"; do
    if pid=$(running_pid "$d"); then say "$d running (pid $pid)"; else say "$d not running"; down=1; fi
  done
  if ((down == 0)); then
    sinfo
    squeue
  fi
  return $down
}

case $action in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 1 ;;
esac
