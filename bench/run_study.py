"""Train HDML and the baseline on the same data, losses and seeds, then tabulate the results.

Every run is one `python -m hdml_tf.train` process with identical flags except --hdml and
the seed; runs go one after another. The script is resumable: a run that has an evaluation
at the final step is skipped (see `read_final_metrics`), and an unfinished one is rerun
with the same command, which resumes from its latest checkpoint.

    nice -n 10 python bench/run_study.py --data_dir=/tmp/emoji_data --study_dir=/tmp/hdml_study

The summary (mean and standard deviation over seeds of the final evaluation) is written as
a Markdown table to --table and as JSON next to it.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Image-folder dataset with train/ and test/ class folders.")
flags.DEFINE_string("study_dir", "/tmp/hdml_study", "Folder of the run directories, one per method, loss and seed.")
flags.DEFINE_list("losses", ["npair", "triplet"], "Metric losses to compare.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method and loss is trained once per seed.")
flags.DEFINE_integer("image_size", 64, "Training and test image side in pixels.")
flags.DEFINE_integer("npair_batch_size", 32, "Batch size of the N-pair runs (2N).")
flags.DEFINE_integer("triplet_batch_size", 30, "Batch size of the triplet runs (3T).")
flags.DEFINE_integer("max_steps", 200, "Training steps of every run.")
flags.DEFINE_integer("eval_every_steps", 100, "Evaluation interval in steps.")
flags.DEFINE_string("table", "bench/results/study_emoji.md", "Markdown file for the summary table.")
flags.DEFINE_bool("summarize_only", False, "Write the table from the finished runs without training.")

# Shared by every run; only --hdml, --loss, the batch size and --seed vary.
COMMON_FLAGS = (
    "--dataset=image_folder",
    "--embedding_size=64",
    "--lr=1e-4",
    "--weight_decay=5e-4",
    "--log_every_steps=10",
    "--checkpoint_every_steps=100",
)
# alpha of the hardness schedule per loss: 90 is the authors' N-pair value, 7 the triplet value
# of later code from the same lab.
ALPHAS = {"npair": 90.0, "triplet": 7.0}
METHODS = ("hdml", "baseline")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r")


def run_name(method, loss, seed):
    return f"{loss}-{method}-seed{seed}"


def train_command(method, loss, seed, model_dir):
    batch_size = FLAGS.npair_batch_size if loss == "npair" else FLAGS.triplet_batch_size
    return [
        sys.executable, "-m", "hdml_tf.train",
        *COMMON_FLAGS,
        f"--data_dir={FLAGS.data_dir}",
        f"--model_dir={model_dir}",
        f"--image_size={FLAGS.image_size}",
        f"--loss={loss}",
        f"--batch_size={batch_size}",
        f"--alpha={ALPHAS[loss]}",
        f"--max_steps={FLAGS.max_steps}",
        f"--eval_every_steps={FLAGS.eval_every_steps}",
        f"--seed={seed}",
        "--hdml" if method == "hdml" else "--nohdml",
    ]


def read_final_metrics(model_dir):
    """Return the run's evaluation at step --max_steps, or None if there is none yet.

    The evaluation is looked up in metrics_history.jsonl, so a run trained further than
    --max_steps still counts: its first --max_steps steps are exactly those of a shorter
    run, because batches and their augmentation depend only on the seed and the step.
    """
    path = os.path.join(model_dir, "metrics_history.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as stream:
        for line in stream:
            record = json.loads(line)
            if record.get("step") == FLAGS.max_steps:
                return record
    return None


def run_all():
    """Train every unfinished run; return the names of runs that failed."""
    failed = []
    for seed in FLAGS.seeds:
        for loss in FLAGS.losses:
            for method in METHODS:
                name = run_name(method, loss, seed)
                model_dir = os.path.join(FLAGS.study_dir, name)
                if read_final_metrics(model_dir) is not None:
                    logging.info("Skipping %s: finished", name)
                    continue
                os.makedirs(model_dir, exist_ok=True)
                command = train_command(method, loss, seed, model_dir)
                logging.info("Starting %s: %s", name, " ".join(command))
                started = time.perf_counter()
                with open(os.path.join(model_dir, "train.log"), "a") as log:
                    returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
                elapsed = time.perf_counter() - started
                if returncode != 0:
                    logging.error("Run %s failed with exit status %d after %.0f s; see its train.log", name, returncode, elapsed)
                    failed.append(name)
                else:
                    logging.info("Finished %s in %.0f s", name, elapsed)
    return failed


def summarize():
    """Return {loss: {method: {metric: (mean, std, n)}}} over the finished runs."""
    summary = {}
    for loss in FLAGS.losses:
        for method in METHODS:
            finished = []
            for seed in FLAGS.seeds:
                metrics = read_final_metrics(os.path.join(FLAGS.study_dir, run_name(method, loss, seed)))
                if metrics is not None:
                    finished.append(metrics)
            stats = {}
            for metric in METRICS:
                values = [metrics[metric] for metrics in finished]
                if values:
                    std = statistics.stdev(values) if len(values) > 1 else float("nan")
                    stats[metric] = (statistics.mean(values), std, len(values))
            summary.setdefault(loss, {})[method] = stats
    return summary


def markdown_table(summary):
    header = "| loss | method | seeds | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 3)]
    for loss, methods in summary.items():
        for method, stats in methods.items():
            if not stats:
                lines.append(f"| {loss} | {method} | 0 | " + " | ".join("" for _ in METRICS) + " |")
                continue
            count = next(iter(stats.values()))[2]
            cells = [f"{100 * mean:.1f} ± {100 * std:.1f}" for mean, std, _ in (stats[m] for m in METRICS)]
            lines.append(f"| {loss} | {method} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(summary):
    os.makedirs(os.path.dirname(FLAGS.table) or ".", exist_ok=True)
    table = markdown_table(summary)
    with open(FLAGS.table, "w") as stream:
        stream.write(
            f"Final evaluation after {FLAGS.max_steps} steps: mean ± standard deviation over seeds, in percent.\n\n"
        )
        stream.write(table)
    json_path = os.path.splitext(FLAGS.table)[0] + ".json"
    with open(json_path, "w") as stream:
        json.dump(
            {"max_steps": FLAGS.max_steps, "flags": list(COMMON_FLAGS), "alphas": ALPHAS, "summary": summary},
            stream, indent=2, sort_keys=True,
        )
    print(table)


def main(argv):
    del argv
    if not FLAGS.data_dir and not FLAGS.summarize_only:
        print("run_study: error: --data_dir is required", file=sys.stderr)
        sys.exit(2)
    failed = [] if FLAGS.summarize_only else run_all()
    write_summary(summarize())
    if failed:
        print(f"run_study: error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
