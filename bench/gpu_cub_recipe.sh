#!/usr/bin/env bash
# Measure HDML training speed and R@1 on CUB-200-2011 with the authors' settings, on a GPU.
#
# Usage (from the repository root, on a CUDA machine):
#   bash bench/gpu_cub_recipe.sh --data_dir=data/cub --pretrained=PATH [--steps=500] [--model_dir=DIR]
#
# Trains a fresh run of --steps steps (default 500) and evaluates it once at the end. The
# settings come from cub.flags at the repository root, or from the same values spelled out
# below when that file is absent. The script prints images/s, the median of the training
# log's "... | N images/s" lines without the first (which includes graph tracing), and R@1
# from metrics.json.
# The summary is also written to MODEL_DIR/recipe_summary.json.
#
# NOTE: this script has not been run: the machine it was written on has no GPU and no CUB.
# With only a few hundred steps, R@1 shows that training works, not the published 53.7,
# which needs 8000 steps.
set -euo pipefail

data_dir=""
pretrained=""
steps=500
model_dir=""
for argument in "$@"; do
  case "$argument" in
    --data_dir=*) data_dir="${argument#*=}" ;;
    --pretrained=*) pretrained="${argument#*=}" ;;
    --steps=*) steps="${argument#*=}" ;;
    --model_dir=*) model_dir="${argument#*=}" ;;
    *) echo "gpu_cub_recipe: error: unknown argument $argument (valid: --data_dir, --pretrained, --steps, --model_dir)" >&2; exit 2 ;;
  esac
done
if [[ -z "$data_dir" || -z "$pretrained" ]]; then
  echo "gpu_cub_recipe: error: --data_dir (the CUB folder) and --pretrained (GoogLeNet ImageNet weights) are required" >&2
  exit 2
fi
if [[ -z "$model_dir" ]]; then
  model_dir="runs/gpu_cub_recipe_$(date -u +%Y%m%dT%H%M%S)"
fi
if [[ -e "$model_dir" ]]; then
  echo "gpu_cub_recipe: error: --model_dir=$model_dir exists; the recipe needs a fresh run, not a resumed one" >&2
  exit 2
fi

if [[ -f cub.flags ]]; then
  settings=(--flagfile=cub.flags)
else
  # The authors' CUB N-pair settings.
  settings=(--dataset=cub --loss=npair --backbone=googlenet --batch_size=128 --image_size=227
            --embedding_size=256 --lr=6e-5 --l2_reg=1.5e-2 --beta=5e3 --weight_decay=1e-3 --alpha=90)
fi

mkdir -p "$model_dir"
log="$model_dir/recipe.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$model_dir/gpu.txt" || true

# Flags after the flagfile override its values.
python -m hdml_tf.train "${settings[@]}" \
  --data_dir="$data_dir" --pretrained="$pretrained" --model_dir="$model_dir" \
  --max_steps="$steps" --eval_every_steps="$steps" --checkpoint_every_steps="$steps" \
  --log_every_steps=20 2>&1 | tee "$log"

python - "$log" "$model_dir" "$steps" <<'PYTHON'
import json
import re
import statistics
import sys

log_path, model_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = [float(match) for match in re.findall(r"\| ([0-9.]+) images/s", open(log_path).read())]
with open(f"{model_dir}/metrics.json") as stream:
    metrics = json.load(stream)
summary = {
    "steps": steps,
    "images_per_second_median": statistics.median(rates[1:]) if len(rates) > 1 else None,
    "images_per_second_samples": len(rates[1:]),
    "recall@1": metrics.get("recall@1"),
    "metrics": metrics,
}
with open(f"{model_dir}/recipe_summary.json", "w") as stream:
    json.dump(summary, stream, indent=2)
print(f"images/s (median of {summary['images_per_second_samples']} log intervals): {summary['images_per_second_median']}")
print(f"R@1 after {steps} steps: {summary['recall@1']}")
PYTHON
