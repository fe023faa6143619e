"""The training command on miniature copies of each benchmark dataset's official layout."""

import json
import os
import subprocess
import sys

import pytest

import miniature_datasets as mini
from cli_helpers import assert_one_line_error

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


def _write_bad_fashion_mnist(data_dir):
    """Write the four Fashion-MNIST files with text in place of gzip data.

    Returns the path of the training images, the file that the loader reads first.
    """
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    for name in names:
        with open(os.path.join(data_dir, name), "wb") as stream:
            stream.write(b"not gzip data\n" * 8)
    return os.path.join(data_dir, names[0])


def _write_single_class_folder(data_dir):
    mini.write_image(os.path.join(data_dir, "cat", "0.png"), mini.color_for(0), image_format="PNG")
    return data_dir


BAD_DATA = {
    "fashion_mnist": (_write_bad_fashion_mnist, "is not a valid gzip file"),
    "image_folder": (_write_single_class_folder, "has only one class folder, cat/"),
}


@pytest.mark.parametrize("dataset", sorted(BAD_DATA))
def test_bad_data_is_one_line_error(tmp_path, dataset):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write, problem = BAD_DATA[dataset]
    named = write(str(data_dir))
    result = subprocess.run(
        [sys.executable, "-m", "hdml_tf.train", f"--dataset={dataset}", f"--data_dir={data_dir}",
         f"--model_dir={tmp_path / 'run'}", "--image_size=64", "--max_steps=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert_one_line_error(result, "hdml_tf.train", named, problem)


@pytest.mark.parametrize("damaged_split", ["train", "test"])
def test_undecodable_jpeg_is_named(tmp_path, damaged_split):
    data_dir = tmp_path / "data"
    write_image_folder(str(data_dir))
    # Every image of the class is damaged, so the first batch (or evaluation) meets one.
    class_name = "ant" if damaged_split == "train" else "eel"
    damaged = [str(data_dir / damaged_split / class_name / f"{number}.jpg") for number in range(3)]
    for path in damaged:
        os.remove(path.replace(".jpg", ".png"))
        mini.write_damaged_jpeg(path)
    result = subprocess.run(
        [sys.executable, "-m", "hdml_tf.train", "--dataset=image_folder", f"--data_dir={data_dir}",
         "--image_size=64", "--batch_size=8", "--max_steps=2", f"--model_dir={tmp_path / 'run'}",
         "--embedding_size=16", "--eval_every_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("hdml_tf.train: error:"):]
    assert f"3 image files of the {'training' if damaged_split == 'train' else 'test'} split fail" in message
    for path in damaged:
        assert path in message
