"""`python -m hdml_tf.evaluate` on a training run and on its exported SavedModel and ONNX file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)


def run_module(*args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    return result


def test_run_saved_model_and_onnx_give_same_metrics_and_grid(tmp_path):
    model_dir = tmp_path / "run"
    trained = run_module("hdml_tf.train", "--dataset=fashion_mnist", f"--model_dir={model_dir}", "--image_size=64",
                         "--embedding_size=16", "--batch_size=4", "--max_steps=2", "--eval_max_images=100")
    assert trained.returncode == 0, trained.stderr[-3000:]
    exported = subprocess.run([sys.executable, "tools/export_savedmodel.py", f"--model_dir={model_dir}",
                               f"--export_base={tmp_path / 'exported'}"], cwd=REPO, capture_output=True, text=True,
                              timeout=900)
    assert exported.returncode == 0, exported.stderr[-3000:]
    onnx_path = tmp_path / "embedder.onnx"
    exported = subprocess.run([sys.executable, "tools/export_onnx.py", f"--model_dir={model_dir}",
                               f"--output={onnx_path}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert exported.returncode == 0, exported.stderr[-3000:]

    outputs = {}
    models = (("run", model_dir), ("saved_model", tmp_path / "exported" / "run"), ("onnx", onnx_path))
    for name, model in models:
        output = tmp_path / f"{name}.json"
        result = run_module("hdml_tf.evaluate", f"--model={model}", "--dataset=fashion_mnist", "--max_images=300",
                            f"--output={output}", "--grid_queries=6", "--grid_k=4")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "recall@1" in result.stdout
        outputs[name] = json.loads(output.read_text())
        grid = Image.open(output.with_suffix(".png"))
        assert grid.size[0] > 400
        assert grid.size[1] > 400
        pixels = np.asarray(grid.convert("RGB")).reshape(-1, 3)
        green_frames = np.sum((pixels[:, 1] > 120) & (pixels[:, 0] < 80) & (pixels[:, 2] < 100))
        red_frames = np.sum((pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80))
        assert green_frames + red_frames > 1000  # every result is framed in one of the two colours

    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi", "f1"):
        assert outputs["run"][key] == pytest.approx(outputs["saved_model"][key], abs=1e-3), key
        assert outputs["run"][key] == pytest.approx(outputs["onnx"][key], abs=1e-3), key


def test_missing_model_is_clear_error(tmp_path):
    result = run_module("hdml_tf.evaluate", f"--model={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"--model={tmp_path / 'nothing'} not found" in result.stderr
