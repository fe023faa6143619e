"""The GoogLeNet N-pair training step in hdml_tf against the same step in PyTorch, side by side.

PyTorch side: torchvision's GoogLeNet (`aux_logits=False, init_weights=True`, no
pretrained weights) with a BatchNorm + Linear embedding head, pytorch-metric-learning's
`NPairsLoss` and Adam. TensorFlow side: `HDMLModel(hdml=False)`, the baseline step of
hdml_tf (GoogLeNet, BatchNorm + Dense head, N-pair loss, Adam), in several variants
(default, XLA, thread settings). Neither side reads data: both time one in-memory batch.

PyTorch is not a project dependency. Install it in its own virtual environment:

    python -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-metric-learning
    nice -n 10 python bench/bench_pytorch.py --image_sizes=64,224 --batch_size=32

Every variant runs in its own subprocess. With several rounds the variants take turns, so
load from other processes is spread over all of them. The medians of all timed steps are
compared as ratios. This file is also the worker (`--worker=tf` or `--worker=torch`),
which is why it uses argparse and imports each framework only in its own worker.

The two networks differ in one respect: torchvision's GoogLeNet has BatchNorm after every
convolution, and BVLC GoogLeNet (hdml_tf) has none but two local response normalisations.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import records

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_PREFIX = "RESULT "
# name: (worker, extra worker arguments, extra environment variables)
VARIANTS = {
    "torch": ("torch", [], {}),
    # One OpenMP thread: on a 2-core CPU loaded by other processes it ran 8x faster than
    # PyTorch's default two threads at 64 px (see BENCHMARKS.md).
    "torch_omp1": ("torch", [], {"OMP_NUM_THREADS": "1"}),
    "tf": ("tf", [], {}),
    "tf_xla": ("tf", ["--jit_compile"], {}),
    "tf_intra2_inter1": ("tf", ["--intra_op_threads=2", "--inter_op_threads=1"], {}),
    "tf_intra1_inter1": ("tf", ["--intra_op_threads=1", "--inter_op_threads=1"], {}),
    "tf_keras_fit_xla": ("tf", ["--keras_fit", "--jit_compile"], {}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=["tf", "torch"], help="Run one worker (internal use).")
    parser.add_argument("--image_sizes", default="64,224", help="Comma-separated image sides in pixels.")
    parser.add_argument("--image_size", type=int, default=64, help="Worker only: image side in pixels.")
    parser.add_argument("--batch_size", type=int, default=32, help="Batch size in images (2N).")
    parser.add_argument("--embedding_size", type=int, default=64, help="Embedding dimension d.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per worker.")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per worker.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds; each runs every variant once.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variants to run.")
    parser.add_argument("--torch_python", default="/tmp/torch-venv/bin/python", help="Python of the PyTorch venv.")
    parser.add_argument("--jit_compile", action="store_true", help="tf worker: compile the step with XLA.")
    parser.add_argument("--keras_fit", action="store_true", help="tf worker: time Keras' own train_function.")
    parser.add_argument("--intra_op_threads", type=int, default=0, help="tf worker: intra-op threads (0: default).")
    parser.add_argument("--inter_op_threads", type=int, default=0, help="tf worker: inter-op threads (0: default).")
    parser.add_argument("--output", default="bench/results/pytorch.json", help="JSON file for the results.")
    return parser.parse_args(argv)


# === Workers ===


def torch_worker(args):
    import numpy as np
    import torch
    import torchvision
    from pytorch_metric_learning.losses import NPairsLoss

    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    model.fc = torch.nn.Sequential(
        torch.nn.BatchNorm1d(1024), torch.nn.Linear(1024, args.embedding_size)
    )
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_function = NPairsLoss()

    rng = np.random.default_rng(0)
    size = args.image_size
    images = torch.from_numpy(rng.uniform(0, 255, (args.batch_size, 3, size, size)).astype(np.float32))
    labels = torch.arange(args.batch_size // 2).repeat(2)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    times = []
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        step()
        if index >= args.warmup:
            times.append(time.perf_counter() - started)
    return {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(), "step_seconds": times}


def tf_worker(args):
    sys.path.insert(0, HERE)
    import tf_step

    tf_step.configure_threads(args.intra_op_threads, args.inter_op_threads)
    import tensorflow as tf

    images, labels = tf_step.make_batch("npair", args.batch_size, args.image_size)
    model, step = tf_step.make_step(False, "npair", args.image_size, args.embedding_size, args.jit_compile)
    batch = (tf.constant(images), tf.constant(labels))
    if args.keras_fit:
        # Keras wraps train_step in its own tf.function, honouring compile(jit_compile=...).
        model.compile(jit_compile=args.jit_compile)
        model.make_train_function(force=True)
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        iterator = iter(dataset)

        def run_step():
            return model.train_function(iterator)

    else:

        def run_step():
            return step(batch)

    times = []
    for index in range(args.warmup + args.steps):
        seconds = tf_step_time(run_step)
        if index >= args.warmup:
            times.append(seconds)
    return {
        "framework": f"tensorflow {tf.__version__}",
        "jit_compile": bool(model.jit_compile) if args.keras_fit else args.jit_compile,
        "step_seconds": times,
    }


def tf_step_time(run_step):
    started = time.perf_counter()
    outputs = run_step()
    for value in outputs.values():
        value.numpy()
    return time.perf_counter() - started


# === Orchestration ===


def run_variant(args, name, image_size):
    worker, extra, variables = VARIANTS[name]
    python = args.torch_python if worker == "torch" else sys.executable
    command = [
        python, os.path.abspath(__file__), f"--worker={worker}", f"--image_size={image_size}",
        f"--batch_size={args.batch_size}", f"--embedding_size={args.embedding_size}",
        f"--warmup={args.warmup}", f"--steps={args.steps}", *extra,
    ]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **variables)
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(
        f"worker {name} at {image_size} px failed with exit status {completed.returncode}:\n{completed.stderr[-3000:]}"
    )


def orchestrate(args):
    variants = args.variants.split(",")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"bench_pytorch: error: unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    results = []
    for image_size in (int(value) for value in args.image_sizes.split(",")):
        times = {name: [] for name in variants}
        details = {}
        for round_index in range(args.rounds):
            for name in variants:
                result = run_variant(args, name, image_size)
                times[name] += result["step_seconds"]
                details[name] = {key: value for key, value in result.items() if key != "step_seconds"}
                print(
                    f"{image_size} px, round {round_index}, {name}: median "
                    f"{args.batch_size / statistics.median(result['step_seconds']):.1f} images/s",
                    flush=True,
                )
        rates = {name: args.batch_size / statistics.median(values) for name, values in times.items()}
        reference = rates.get("torch") or rates.get("torch_omp1")
        summary = {
            "image_size": image_size,
            "batch_size": args.batch_size,
            "images_per_second": rates,
            "step_seconds": times,
            "details": details,
        }
        if reference:
            summary["ratio_to_torch"] = {name: rate / reference for name, rate in rates.items()}
        results.append(summary)
        print(f"{image_size} px, batch {args.batch_size}: " + ", ".join(f"{n} {r:.1f} images/s" for n, r in rates.items()))

    record = {
        **records.machine_fields(),
        "warmup": args.warmup,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "results": results,
    }
    records.write_record(args.output, record)


def main():
    args = parse_args()
    if args.worker == "torch":
        print(RESULT_PREFIX + json.dumps(torch_worker(args)), flush=True)
    elif args.worker == "tf":
        print(RESULT_PREFIX + json.dumps(tf_worker(args)), flush=True)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
