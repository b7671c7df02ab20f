#!/usr/bin/env bash
# Trains DGI on a Cloud TPU VM pod slice: creates the slice (or reuses one of that name),
# installs this repository on every worker and runs the same `dgi train` on all of them.
# JAX finds its peers on a pod by itself (--config.train.distributed=true makes `dgi`
# call jax.distributed.initialize()); every worker feeds its share of each global batch.
#
# usage: launch/tpu_pod.sh --name NAME --zone ZONE --workdir gs://BUCKET/PATH
#                          [--accelerator-type v4-32] [--version tpu-ubuntu2204-base]
#                          [--config configs/pod_t5large.py] [--project PROJECT] [--spot]
#                          [--dry-run] [-- EXTRA_DGI_FLAGS...]
#   --name              TPU VM name (created if it does not exist)
#   --zone              GCP zone, e.g. us-central2-b
#   --workdir           gs:// directory for checkpoints, metrics and the tokenizer; every
#                       worker writes its part of each checkpoint there, so it must be
#                       shared (the prepared TFDS files stay on each worker's disk, in
#                       ~/.cache/dgi_jax/tfds, since array_record reads local files only)
#   --accelerator-type  slice type when creating (default v4-32: 4 workers x 4 chips)
#   --version           TPU VM software version when creating (default tpu-ubuntu2204-base)
#   --config            config file, relative to the repository (default configs/pod_t5large.py)
#   --project           GCP project (default: gcloud's configured one)
#   --spot              create a Spot slice (cheaper; preemptible — training resumes from
#                       the last checkpoint when rerun)
#   --dry-run           print the commands instead of running them
#   Flags after `--` go to `dgi train`, e.g. -- --config.train.num_steps=100
#
# The committed HEAD is shipped (git archive), so what runs is what a commit names. The
# training command stays attached to the ssh connection: run this script under tmux or screen
# for long jobs. Rerunning it resumes from the last checkpoint in --workdir.
set -euo pipefail

name=""
zone=""
workdir=""
accelerator_type="v4-32"
version="tpu-ubuntu2204-base"
config="configs/pod_t5large.py"
project=""
spot=0
dry_run=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d'; }
while (($#)); do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --accelerator-type) accelerator_type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "$0: unknown flag $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done
extra_flags=("$@")
for required in name zone workdir; do
  if [[ -z "${!required}" ]]; then
    echo "$0: --${required} is required (see $0 --help)" >&2
    exit 2
  fi
done
if [[ "${workdir}" != gs://* ]]; then
  echo "$0: --workdir must be a gs:// path: every worker writes to it" >&2
  exit 2
fi
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ ! -f "${repo_root}/${config}" ]]; then
  echo "$0: no config ${config} in ${repo_root}" >&2
  exit 2
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="${zone}")
[[ -n "${project}" ]] && where+=(--project="${project}")

# Prints a command (arguments with shell metacharacters single-quoted, so the line can be
# pasted into a shell) and runs it unless --dry-run.
run() {
  local arg line=""
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      line+="${arg} "
    else
      line+="${arg@Q} "
    fi
  done
  echo "${line% }"
  if ((!dry_run)); then
    "$@"
  fi
}

# 1. The slice.
create=("${gcloud_tpu[@]}" create "${name}" "${where[@]}"
        --accelerator-type="${accelerator_type}" --version="${version}")
((spot)) && create+=(--spot)
if ((dry_run)); then
  echo "# create the slice unless it exists:"
  run "${gcloud_tpu[@]}" describe "${name}" "${where[@]}" --format='value(state)'
  run "${create[@]}"
elif state="$("${gcloud_tpu[@]}" describe "${name}" "${where[@]}" --format='value(state)' \
                2>/dev/null)"; then
  echo "reusing TPU VM ${name} (state ${state})"
else
  run "${create[@]}"
fi

# 2. The code, on every worker.
archive="dgi_jax-$(git -C "${repo_root}" rev-parse --short HEAD).tar.gz"
remote_dir="dgi_jax"
echo "# ship the committed HEAD and install it on every worker:"
run git -C "${repo_root}" archive --format=tar.gz --output="/tmp/${archive}" HEAD
run "${gcloud_tpu[@]}" scp "/tmp/${archive}" "${name}:${archive}" "${where[@]}" --worker=all
install="rm -rf ~/${remote_dir} && mkdir -p ~/${remote_dir}"
install+=" && tar -xzf ~/${archive} -C ~/${remote_dir}"
install+=" && cd ~/${remote_dir} && python3 -m pip install --quiet \".[tpu]\""
run "${gcloud_tpu[@]}" ssh "${name}" "${where[@]}" --worker=all --command="${install}"

# 3. The same training command on every worker; each joins the job by itself.
train="cd ~/${remote_dir} && python3 -m dgi_jax.main train --config=${config}"
train+=" --workdir=${workdir} --config.train.distributed=true"
for flag in "${extra_flags[@]+"${extra_flags[@]}"}"; do
  train+=" $(printf '%q' "${flag}")"
done
echo "# train on every worker:"
run "${gcloud_tpu[@]}" ssh "${name}" "${where[@]}" --worker=all --command="${train}"
