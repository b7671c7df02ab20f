#!/usr/bin/env bash
# Runs `dgi train` as N processes on this machine, each with M simulated CPU devices, joined
# through a coordinator on 127.0.0.1: the multi-host code path (jax.distributed, per-process
# data, cross-process collectives, multi-process checkpoints) without a cluster.
#
# usage: launch/local_multihost.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT]
#                                  [-l LOG_DIR] -- DGI_TRAIN_FLAGS...
#   -n  processes (default 2)
#   -d  CPU devices per process (default 4); appended to XLA_FLAGS
#   -p  coordinator port (default: a free one)
#   -l  per-process logs go to LOG_DIR/process_<i>.log (default: <workdir>/logs)
#   Everything after `--` is passed to every process's `dgi train`, e.g.
#   launch/local_multihost.sh -n 2 -d 4 -- --config configs/tiny.py --workdir /tmp/run
#
# Waits for every process. If one fails the others are stopped (they would otherwise wait
# for the lost peer until JAX's heartbeat timeout) and the exit status is non-zero.
# SIGINT/SIGTERM are forwarded to every process, which checkpoints and stops as on a
# preempted pod.
set -euo pipefail

processes=2
devices=4
port=""
log_dir=""
while getopts "n:d:p:l:h" opt; do
  case "${opt}" in
    n) processes="${OPTARG}" ;;
    d) devices="${OPTARG}" ;;
    p) port="${OPTARG}" ;;
    l) log_dir="${OPTARG}" ;;
    h) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOG_DIR] -- DGI_TRAIN_FLAGS..." >&2
       exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if (($# == 0)); then
  echo "$0: no dgi train flags after --; see $0 -h" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
if [[ -z "${port}" ]]; then
  port="$("${python}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi
if [[ -z "${log_dir}" ]]; then
  workdir=""
  args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
      --workdir=*) workdir="${args[i]#--workdir=}" ;;
      --workdir) workdir="${args[i + 1]:-}" ;;
    esac
  done
  log_dir="${workdir:-.}/logs"
fi
mkdir -p "${log_dir}"

pids=()
stop_all() {
  local signal="$1"
  for pid in "${pids[@]}"; do
    kill "-${signal}" "${pid}" 2>/dev/null || true
  done
}
trap 'stop_all TERM' INT TERM

echo "launching ${processes} processes x ${devices} CPU devices, coordinator 127.0.0.1:${port}," \
     "logs in ${log_dir}/"
for ((i = 0; i < processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}" \
  PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}" \
    "${python}" -m dgi_jax.main train "$@" \
      --coordinator_address="127.0.0.1:${port}" --num_processes="${processes}" \
      --process_id="${i}" >"${log_dir}/process_${i}.log" 2>&1 &
  pids+=("$!")
done

# Poll rather than `wait` on one pid after another: a failure of any process must stop
# the rest at once. Stopped processes get SIGTERM, then SIGKILL after a grace period
# (one stuck in a collective with the lost peer does not reach its SIGTERM check).
grace_s=30
status=0
kill_at=""
finished=()
while ((${#finished[@]} < processes)); do
  for i in "${!pids[@]}"; do
    [[ -n "${finished[i]:-}" ]] && continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    code=0
    wait "${pids[i]}" || code=$?
    finished[i]="${code}"
    if ((code != 0)); then
      echo "process ${i} exited with status ${code}; last lines of ${log_dir}/process_${i}.log:" >&2
      tail -n 20 "${log_dir}/process_${i}.log" >&2
      if ((status == 0)); then
        status="${code}"
        stop_all TERM
        kill_at=$((SECONDS + grace_s))
      fi
    fi
  done
  if [[ -n "${kill_at}" ]] && ((SECONDS >= kill_at)); then
    stop_all KILL
  fi
  if ((${#finished[@]} < processes)); then
    sleep 0.5
  fi
done
if ((status == 0)); then
  echo "all ${processes} processes finished; process 0's log: ${log_dir}/process_0.log"
fi
exit "${status}"
