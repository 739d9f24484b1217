#!/usr/bin/env bash
# Tests `rest reproduce --emit-slurm` against a real Slurm: installs Slurm and MUNGE from Debian
# when missing, starts munged, slurmctld and slurmd as a one-node cluster on this machine (state,
# spool and logs in a temporary folder), runs tests/reproduce_slurm.rs with REST_SLURM_TEST=1,
# and stops the daemons it started by their PID files. Exits non-zero on any failure, including
# a failure to install or start Slurm. Needs root (as CI and the developer machines run).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

say() { echo "slurm-test: $*"; }
die() { echo "slurm-test: FAILED: $*" >&2; exit 1; }

have_all() {
  command -v sbatch >/dev/null && command -v sinfo >/dev/null &&
    [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]
}
if ! have_all; then
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
    || die "cannot install Slurm (apt-get install slurmctld slurmd slurm-client munge)"
  have_all || die "Slurm is still missing after installing it"
fi

work=$(mktemp -d /tmp/rest-slurm.XXXXXX)
mkdir -p "$work/state" "$work/spool" "$work/munge"
started_munged=""
cleanup() {
  rc=$?
  for pidfile in "$work/slurmd.pid" "$work/slurmctld.pid" $started_munged; do
    if [ -s "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  if [ "$rc" != 0 ]; then
    for log in slurmctld.log slurmd.log; do
      [ -f "$work/$log" ] && { echo "--- $log (last lines)"; tail -n 30 "$work/$log"; }
    done
  fi
  rm -rf "$work"
  say "done in $(( $(date +%s) - t0 )) s (exit $rc)"
}
trap cleanup EXIT

# MUNGE: Slurm's authentication. Reuse a running munged; else start one as the munge user.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid || die "munged did not start"
  started_munged=/run/munge/munged.pid
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munge does not work"
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
port=${REST_SLURM_PORT:-6817}
export SLURM_CONF="$work/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=resttest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

/usr/sbin/slurmctld -c || die "slurmctld did not start"
/usr/sbin/slurmd || die "slurmd did not start"
state=""
for _ in $(seq 120); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || die "the Slurm node is not idle after 60 s (state '$state')"
say "one-node Slurm up ($host, $cpus CPUs) after $(( $(date +%s) - t0 )) s"

REST_SLURM_TEST=1 REST_SLURM_WORKDIR="$work" \
  cargo test --release --test reproduce_slurm -- --nocapture
