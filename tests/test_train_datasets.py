"""The training command on miniature copies of each benchmark dataset's official layout."""

import json
import os
import subprocess
import sys

import pytest

import miniature_datasets as mini

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_image_folder(data_dir):
    for split, classes in (("train", ("ant", "bee", "cat", "dog")), ("test", ("eel", "fox"))):
        for index, name in enumerate(classes):
            for number in range(3):
                mini.write_image(os.path.join(data_dir, split, name, f"{number}.png"),
                                 mini.color_for(10 * index + number), image_format="PNG")


WRITERS = {
    "cub": lambda d: mini.write_cub(d, class_ids=(1, 2, 3, 4, 101, 102)),
    "cars196": lambda d: mini.write_cars_annos(d, class_ids=(1, 2, 3, 4, 99, 100)),
    "sop": lambda d: mini.write_sop(d, train_classes=(1, 2, 3, 4)),
    "image_folder": write_image_folder,
}


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_two_training_steps_on_miniature(tmp_path, dataset):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    WRITERS[dataset](str(data_dir))
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "hdml_tf.train", f"--dataset={dataset}", f"--data_dir={data_dir}",
         "--allow_partial_dataset", "--image_size=64", "--batch_size=8", "--max_steps=2",
         f"--model_dir={model_dir}", "--embedding_size=16", "--eval_every_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 2
    assert 0.0 <= metrics["recall@1"] <= 1.0
    assert json.loads((model_dir / "run_config.json").read_text())["dataset"] == dataset
