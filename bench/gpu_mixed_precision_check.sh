#!/usr/bin/env bash
# Mixed float16 check for a CUDA machine: trains the Fashion-MNIST quick start for 200
# steps at 227 px in float32 and in mixed_float16 (with dynamic loss scaling on each of
# the three optimisers), then prints images/s, the final loss scale and R@1 of both.
# Passes when every loss is finite and R@1 differs by at most 0.03.
#
# Usage (repository root, GPU visible to TensorFlow, Fashion-MNIST installed or in $DATA):
#   bash bench/gpu_mixed_precision_check.sh [OUTPUT_DIR]
# NOTE: written for such a machine and not run here: this project's machines have no GPU.
set -euo pipefail
out=${1:-/tmp/hdml_mixed_precision_check}
data_flag=${DATA:+--data_dir=$DATA}
common=(--flagfile=fashion_mnist.flags --image_size=227 --batch_size=10 --max_steps=200
        --eval_every_steps=200 --log_every_steps=20 $data_flag)

python -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); print('GPUs:', gpus); assert gpus"
for precision in float32 mixed_float16; do
    rm -rf "$out/$precision"
    python -m hdml_tf.train "${common[@]}" --precision=$precision --model_dir="$out/$precision" 2>"$out.$precision.log"
done

python - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
results = {}
for precision in ("float32", "mixed_float16"):
    log = open(f"{out}.{precision}.log").read()
    rates = [float(x) for x in re.findall(r"\| ([0-9.]+) images/s", log)][1:]  # the first includes tracing
    losses = [float(x) for x in re.findall(r"j_metric=(\S+)", log)]
    scales = re.findall(r"loss_scale=(\S+)", log)
    recall = json.load(open(f"{out}/{precision}/metrics.json"))["recall@1"]
    results[precision] = recall
    finite = all(abs(x) < float("inf") and x == x for x in losses)
    print(f"{precision}: {sorted(rates)[len(rates) // 2]:.1f} images/s (median), R@1 {recall:.4f}, "
          f"losses finite: {finite}, final loss scale: {scales[-1] if scales else 'n/a'}")
    assert finite, f"{precision}: non-finite loss"
difference = abs(results["float32"] - results["mixed_float16"])
print(f"R@1 difference: {difference:.4f}")
assert difference <= 0.03, "mixed_float16 R@1 differs from float32 by more than 0.03"
print("PASS")
PY
