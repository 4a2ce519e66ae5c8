#!/bin/bash
# A one-host Slurm cluster for tests (Debian's slurm-wlm, root, no systemd):
#   slurm/ci/local-slurm.sh start   # install if needed, write slurm.conf, start munged, slurmctld, slurmd
#   slurm/ci/local-slurm.sh stop    # stop the daemons it started (by their PID files)
# Verified facts behind each step: shared/notes/cluster-testing.md.
set -euo pipefail
PIDS=/run/instructrl-slurm
CONF=/etc/slurm/slurm.conf

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return 0
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
}

configure() {
  local host mem
  host=$(hostname -s)
  grep -qw "$host" /etc/hosts || echo "127.0.0.1 $host" >> /etc/hosts
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2000 ))
  mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$PIDS"
  chown -R slurm:slurm /var/lib/slurm
  cat > "$CONF" <<CONF
ClusterName=ci
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  install_packages
  configure
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    echo "$(pgrep -o -x munged)" > "$PIDS/munged.pid"
  fi
  for f in slurmctld slurmd; do  # a stale PID file from a crash would stop the daemon from starting
    if [ -f "$PIDS/$f.pid" ] && ! kill -0 "$(cat "$PIDS/$f.pid")" 2>/dev/null; then rm -f "$PIDS/$f.pid"; fi
  done
  [ -f "$PIDS/slurmctld.pid" ] || /usr/sbin/slurmctld -c -i
  [ -f "$PIDS/slurmd.pid" ] || /usr/sbin/slurmd
  for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && { sinfo; return 0; }
    sleep 0.2
  done
  echo "local-slurm: the node did not become idle" >&2
  sinfo -N -l >&2 || true
  return 1
}

stop() {
  for f in slurmd slurmctld munged; do
    [ -f "$PIDS/$f.pid" ] || continue
    pid=$(cat "$PIDS/$f.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDS/$f.pid"
  done
}

"${1:?usage: local-slurm.sh start|stop}"
