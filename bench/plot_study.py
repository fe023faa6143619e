"""Plot the HDML-versus-baseline study written by bench/run_study.py.

Two figures, each with one panel per loss:

- R@1 on the test classes against the training step, mean over seeds with a band of one
  standard deviation, HDML and baseline;
- the hardness schedule of the HDML runs: lambda = exp(-alpha / J_avg) and J_avg against
  the step, one line per seed, read from the TensorBoard event files under RUN/train.

    python bench/plot_study.py --study_dir=/tmp/hdml_study --max_steps=200

The curves are also written as JSON (--curves), so the plots can be redrawn without the
run directories (--from_curves).
"""

import glob
import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_study  # noqa: E402  (run names and methods; also defines --study_dir, --losses, --seeds, --max_steps)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "docs/benchmarks", "Folder for the PNG files.")
flags.DEFINE_string("curves", "bench/results/study_curves.json", "JSON file the curves are written to.")
flags.DEFINE_bool("from_curves", False, "Read the curves from --curves instead of the run directories.")
flags.DEFINE_list("schedule_tags", ["train/lambda", "train/j_avg"], "TensorBoard scalars of the schedule figure.")


def read_history(model_dir, max_steps):
    """Return {step: metrics} of the run's evaluations up to max_steps (the latest record per step)."""
    path = os.path.join(model_dir, "metrics_history.jsonl")
    history = {}
    if os.path.isfile(path):
        with open(path) as stream:
            for line in stream:
                record = json.loads(line)
                if record["step"] <= max_steps:
                    history[record["step"]] = record
    return history


def read_scalars(log_dir, tags, max_steps):
    """Return {tag: [(step, value), ...]} from the TensorBoard event files in log_dir."""
    import tensorflow as tf

    values = {tag: {} for tag in tags}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in values and event.step <= max_steps:
                    # tf.summary.scalar in TF 2 stores the value as a tensor, not simple_value.
                    scalar = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                    values[value.tag][int(event.step)] = scalar
    return {tag: sorted(points.items()) for tag, points in values.items()}


def collect_curves(study_dir, losses, seeds, max_steps, tags):
    curves = {"max_steps": max_steps, "runs": {}}
    for loss in losses:
        for method in run_study.METHODS:
            for seed in seeds:
                name = run_study.run_name(method, loss, seed)
                model_dir = os.path.join(study_dir, name)
                history = read_history(model_dir, max_steps)
                if max_steps not in history:
                    continue
                curves["runs"][name] = {
                    "loss": loss,
                    "method": method,
                    "seed": seed,
                    "recall@1": sorted((step, record["recall@1"]) for step, record in history.items()),
                    "scalars": read_scalars(os.path.join(model_dir, "train"), tags, max_steps),
                }
    return curves


def _pyplot():
    """Return matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style_panel(axis, title, ylabel=None):
    """Title, label and grid one panel, with a legend when it has labelled lines."""
    axis.set_title(title)
    axis.set_xlabel("training step")
    if ylabel:
        axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend()


def _save_figure(plt, figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_recall(curves, losses, path):
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.6), squeeze=False)
    for axis, loss in zip(axes[0], losses):
        for method, color in zip(run_study.METHODS, ("tab:red", "tab:blue")):
            runs = [run for run in curves["runs"].values() if run["loss"] == loss and run["method"] == method]
            if not runs:
                continue
            steps = sorted(set.intersection(*(set(step for step, _ in run["recall@1"]) for run in runs)))
            table = np.array([[dict(run["recall@1"])[step] for step in steps] for run in runs]) * 100
            mean = table.mean(axis=0)
            std = table.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
            axis.plot(steps, mean, marker="o", color=color, label=f"{method} ({len(runs)} seeds)")
            axis.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        _style_panel(axis, f"{loss}: R@1 on the test classes", "R@1 (%)")
    _save_figure(plt, figure, path)


def plot_schedule(curves, losses, tags, path):
    plt = _pyplot()
    figure, axes = plt.subplots(len(tags), len(losses), figsize=(5 * len(losses), 3.0 * len(tags)), squeeze=False)
    for column, loss in enumerate(losses):
        runs = [run for run in curves["runs"].values() if run["loss"] == loss and run["method"] == "hdml"]
        for row, tag in enumerate(tags):
            axis = axes[row][column]
            for run in runs:
                points = run["scalars"].get(tag, [])
                if points:
                    steps, values = zip(*points)
                    axis.plot(steps, values, label=f"seed {run['seed']}")
            # J_avg falls from its initial 1e6 to single digits, and lambda from 1 to about 1e-10,
            # so only a log scale shows both ends.
            axis.set_yscale("log")
            _style_panel(axis, f"{loss} HDML: {tag}")
    _save_figure(plt, figure, path)


def main(argv):
    del argv
    losses = list(run_study.FLAGS.losses)
    if FLAGS.from_curves:
        with open(FLAGS.curves) as stream:
            curves = json.load(stream)
    else:
        curves = collect_curves(
            FLAGS.study_dir, losses, run_study.FLAGS.seeds, run_study.FLAGS.max_steps, FLAGS.schedule_tags
        )
        os.makedirs(os.path.dirname(FLAGS.curves) or ".", exist_ok=True)
        with open(FLAGS.curves, "w") as stream:
            json.dump(curves, stream, indent=1)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    plot_recall(curves, losses, os.path.join(FLAGS.output_dir, "study_recall_at_1.png"))
    plot_schedule(curves, losses, FLAGS.schedule_tags, os.path.join(FLAGS.output_dir, "study_schedule.png"))
    print(f"Plotted {len(curves['runs'])} runs to {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
