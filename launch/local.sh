#!/usr/bin/env bash
# Runs COMMAND as N processes of one multi-process JAX run on this machine (CPU), e.g.
#
#   launch/local.sh 2 python experiments/main.py --config=configs/walker_mdp.py:quick
#   AIME_LOCAL_DEVICES=2 launch/local.sh 2 python experiments/main.py ...   # 2 x 2 CPU devices
#
# Every process gets the coordinator (127.0.0.1:PORT, process 0 serves it), the process count
# and its own index through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
# aime_jax.parallel.initialize_distributed reads; CPU collectives go through gloo.
#
# Environment:
#   AIME_COORDINATOR_PORT  the coordinator's port (default: a free one)
#   AIME_LOCAL_DEVICES     CPU devices per process (XLA --xla_force_host_platform_device_count)
#   JAX_PLATFORMS          default cpu
#
# Waits for all processes. If one fails, the others are stopped (they would wait for it at
# the next collective) and the script exits with the failed process's status.
set -u

usage() {
  echo "usage: $0 N COMMAND [ARGS...]   (N processes of COMMAND on this machine)" >&2
  exit 2
}
[ $# -ge 2 ] || usage
N=$1
shift
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "error: N must be a positive integer, got '$N'" >&2; usage; }

if [ -n "${AIME_COORDINATOR_PORT:-}" ]; then
  PORT=$AIME_COORDINATOR_PORT
else
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null) \
    || PORT=$((20000 + RANDOM % 20000))
fi
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if [ -n "${AIME_LOCAL_DEVICES:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$AIME_LOCAL_DEVICES"
fi

declare -A live=()  # pid -> process index
stop_all() {
  for pid in "${!live[@]}"; do
    kill "$pid" 2>/dev/null
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=$N JAX_PROCESS_ID=$i "$@" &
  live[$!]=$i
done

while [ "${#live[@]}" -gt 0 ]; do
  wait -n -p finished "${!live[@]}"
  status=$?
  index=${live[$finished]}
  unset "live[$finished]"
  if [ "$status" -ne 0 ]; then
    echo "launch/local.sh: process $index (pid $finished) exited with status $status; stopping the others" >&2
    stop_all
    wait
    exit "$status"
  fi
done
exit 0
