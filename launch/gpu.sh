#!/usr/bin/env bash
# Trains DGI on one GPU of this machine.
#
# usage: launch/gpu.sh [--install] [--config configs/default.py] --workdir DIR
#                      [-- EXTRA_DGI_FLAGS...]
#   --install   first `pip install -e .[gpu]` (JAX with its CUDA 12 wheels)
#   --config    config file (default configs/default.py)
#   --workdir   checkpoints, metrics and data; rerunning resumes from its last checkpoint
#   Flags after `--` go to `dgi train`, e.g. -- --config.model.dtype=bfloat16
#
# Stops before training if JAX does not see a GPU: a missing CUDA runtime otherwise makes
# JAX fall back to the CPU with only a warning. Pick the GPU with CUDA_VISIBLE_DEVICES.
set -euo pipefail

install=0
config="configs/default.py"
workdir=""
while (($#)); do
  case "$1" in
    --install) install=1; shift ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    --) shift; break ;;
    *) echo "$0: unknown flag $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "${workdir}" ]]; then
  echo "$0: --workdir is required (see $0 --help)" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${repo_root}"
python="${PYTHON:-python3}"
if ((install)); then
  "${python}" -m pip install -e ".[gpu]"
fi
"${python}" -c 'import jax, sys; devices = jax.devices(); print("devices:", devices);
sys.exit(0 if devices[0].platform == "gpu" else "no GPU visible to JAX (try --install)")'
exec "${python}" -m dgi_jax.main train --config="${config}" --workdir="${workdir}" "$@"
