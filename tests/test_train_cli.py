"""The training command end to end on Fashion-MNIST, and its answers to bad flags."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist"
)
QUICK = ["--dataset=fashion_mnist", "--image_size=64", "--embedding_size=16", "--log_every_steps=2",
         "--eval_max_images=200", "--eval_batch_size=100"]


def run_train(*args):
    return subprocess.run(
        [sys.executable, "-m", "hdml_tf.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert error_lines, result.stderr[-2000:]
    for fragment in fragments:
        assert any(fragment in line for line in error_lines), (fragment, error_lines)


@pytest.mark.parametrize(
    "flag, fragments",
    [
        ("--loss=arcface", ["--loss=arcface", "npair"]),
        ("--dataset=imagenet", ["--dataset=imagenet", "fashion_mnist"]),
        ("--image_size=32", ["--image_size=32", "64"]),
        ("--data_dir=/nonexistent/fashion", ["--data_dir=/nonexistent/fashion", "does not exist"]),
        ("--eval_max_images=1", ["--eval_max_images=1", "at least 2"]),
        ("--alpha=0", ["--alpha=0.0", "must be positive"]),
        ("--beta=-1", ["--beta=-1.0", "0 or more"]),
        ("stray_argument", ["unexpected argument 'stray_argument'", "--model_dir=DIR"]),
    ],
)
def test_invalid_flag_value_is_one_clear_line(tmp_path, flag, fragments):
    result = run_train(*QUICK, f"--model_dir={tmp_path}", "--max_steps=1", flag)
    assert_clean_error(result, *fragments)


def test_model_dir_that_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    result = run_train(*QUICK, f"--model_dir={path}", "--max_steps=1")
    assert_clean_error(result, f"--model_dir={path} is a file, not a folder")
    assert result.stderr.count("is a file, not a folder") == 1  # printed once, not logged as well


def test_missing_model_dir():
    assert_clean_error(run_train(*QUICK), "--model_dir is required")


def test_empty_data_dir_says_what_to_place(tmp_path):
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    result = run_train(*QUICK, f"--model_dir={tmp_path / 'run'}", f"--data_dir={data_dir}")
    assert_clean_error(result, "train-images-idx3-ubyte.gz", str(data_dir))


@needs_fashion_mnist
@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--batch_size=9"], ["--batch_size=9", "multiple of 2"]),
        (["--loss=triplet", "--batch_size=10"], ["--batch_size=10", "multiple of 3"]),
        (["--batch_size=6", "--cpu_replicas=4"], ["--batch_size=6", "4 replica(s)"]),
        (["--batch_size=12"], ["--batch_size=12", "only 5 classes"]),
    ],
)
def test_batch_size_that_does_not_fit(tmp_path, flags, fragments):
    result = run_train(*QUICK, f"--model_dir={tmp_path}", "--max_steps=1", *flags)
    assert_clean_error(result, *fragments)


@needs_fashion_mnist
def test_train_writes_metrics_and_resumes(tmp_path):
    model_dir = tmp_path / "run"
    first = run_train(*QUICK, f"--model_dir={model_dir}", "--batch_size=4", "--max_steps=4",
                      "--eval_every_steps=2", "--checkpoint_every_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 4
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r", "r_precision"):
        assert 0.0 <= metrics[key] <= 1.0, key
    history = [json.loads(line) for line in (model_dir / "metrics_history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [2, 4]

    second = run_train(*QUICK, f"--model_dir={model_dir}", "--batch_size=4", "--max_steps=6",
                       "--eval_every_steps=2", "--checkpoint_every_steps=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from" in second.stderr
    assert "at step 4" in second.stderr
    assert json.loads((model_dir / "metrics.json").read_text())["step"] == 6

    # A finished run is not evaluated again: the history keeps one record per step.
    again = run_train(*QUICK, f"--model_dir={model_dir}", "--batch_size=4", "--max_steps=6")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already evaluated" in again.stderr
    history = [json.loads(line) for line in (model_dir / "metrics_history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [2, 4, 6]

    # A changed setting is reported, stored in run_config.json and, here, re-evaluated.
    resized = run_train(*QUICK, f"--model_dir={model_dir}", "--batch_size=4", "--max_steps=6", "--image_size=72")
    assert resized.returncode == 0, resized.stderr[-3000:]
    assert "image_size: 64 -> 72" in resized.stderr
    assert json.loads((model_dir / "run_config.json").read_text())["image_size"] == 72
    history = [json.loads(line) for line in (model_dir / "metrics_history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [2, 4, 6, 6]

    changed = run_train(*QUICK, f"--model_dir={model_dir}", "--batch_size=4", "--max_steps=8",
                        "--embedding_size=32")
    assert_clean_error(changed, "embedding_size")


@needs_fashion_mnist
def test_zero_steps_saves_checkpoint(tmp_path):
    model_dir = tmp_path / "untrained"
    result = run_train(*QUICK, f"--model_dir={model_dir}", "--batch_size=4", "--max_steps=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (model_dir / "ckpt-0.index").is_file()
    assert json.loads((model_dir / "metrics.json").read_text())["step"] == 0
    config = json.loads((model_dir / "run_config.json").read_text())
    assert config["data_dir"] is None
    assert config["test_class_fraction"] is None
