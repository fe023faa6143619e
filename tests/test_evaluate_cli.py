"""`python -m hdml_tf.evaluate` on a training run and on its exported SavedModel and ONNX file.

The error tests need no training. They use a tiny image folder, an ONNX graph that only
flattens its input, ONNX files of random bytes and run directories with an empty
checkpoint. Most of them end before any model or dataset is loaded.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cli_helpers
import miniature_datasets as mini

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = "hdml_tf.evaluate"
TINY_IMAGE_SIZE = 8

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)


def run_module(*args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return result


def run_evaluate(*args):
    return run_module(PROGRAM, *args)


def assert_one_line_error(result, *fragments):
    cli_helpers.assert_one_line_error(result, PROGRAM, *fragments)


def write_image_folder(folder, images_per_class):
    """Write one class folder of small PNGs per entry of `images_per_class`; return `folder` as a str."""
    generator = np.random.default_rng(0)
    for class_index, count in enumerate(images_per_class):
        class_folder = folder / f"class_{class_index}"
        class_folder.mkdir(parents=True)
        for image_index in range(count):
            pixels = np.full((12, 12, 3), 40 * class_index, dtype=np.uint8)
            pixels += generator.integers(0, 30, pixels.shape, dtype=np.uint8)
            Image.fromarray(pixels).save(class_folder / f"{image_index}.png")
    return str(folder)


def write_flatten_onnx(path):
    """Write an ONNX model that maps [batch, 8, 8, 3] images to their flattened pixels."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    size = TINY_IMAGE_SIZE * TINY_IMAGE_SIZE * 3
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["embedding"])],
        "flatten",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", size])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [-1, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def write_fake_run(folder, **run_config):
    """Write a run directory with `run_config` and an empty checkpoint that `tf.train.latest_checkpoint` finds."""
    folder.mkdir()
    (folder / "run_config.json").write_text(json.dumps(run_config))
    (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    (folder / "ckpt-1.index").write_bytes(b"")
    return str(folder)


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images", [3, 3, 3, 3])


@pytest.fixture
def garbage_onnx(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return str(path)


# === Training run, SavedModel and ONNX ===


@needs_fashion_mnist
def test_exported_models_match_run(tmp_path):
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


# === Usage errors ===


def test_missing_model_is_clear_error(tmp_path):
    result = run_module("hdml_tf.evaluate", f"--model={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"--model={tmp_path / 'nothing'} not found" in result.stderr


def test_flag_errors_precede_model_loading(tmp_path, image_folder, garbage_onnx):
    # The model file is unreadable, so an error naming the flag shows that the flag was
    # checked before the model was opened.
    common = [f"--model={garbage_onnx}", "--dataset=image_folder", f"--data_dir={image_folder}"]
    cases = [
        (["--max_images=0"], ["--max_images=0", "at least 2 images"]),
        (["--max_images=1"], ["--max_images=1", "at least 2 images"]),
        (["--batch_size=0"], ["--batch_size=0", "positive integer"]),
        (["--recall_ks=0"], ["--recall_ks=0", "positive integers"]),
        (["--recall_ks=1,two"], ["--recall_ks=1,two", "positive integers"]),
        (["--recall_ks="], ["--recall_ks=", "positive integers"]),
        (["--grid_k=0"], ["--grid_k=0", "positive integer"]),
        (["--grid_queries=-1"], ["--grid_queries=-1", "0 (no grid) or more"]),
        (["--seed=-1"], ["--seed=-1", "0 or more"]),
        (["--test_class_fraction=1.5"], ["--test_class_fraction=1.5", "between 0 and 1"]),
        ([f"--data_dir={tmp_path / 'none'}"], [f"--data_dir={tmp_path / 'none'}", "does not exist"]),
        (["--batch_size=abc"], ["--batch_size=abc"]),
        (["--split=valid"], ["--split", "valid"]),
        (["surplus"], ["unexpected arguments", "surplus"]),
    ]
    for arguments, fragments in cases:
        result = run_evaluate(*common, *arguments)
        assert_one_line_error(result, *fragments)
        assert "ONNX" not in result.stderr, arguments


def test_model_errors(tmp_path, image_folder, garbage_onnx):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model")
    saved_model = tmp_path / "saved_model"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x00 damaged")
    untrained_run = tmp_path / "untrained_run"
    untrained_run.mkdir()
    (untrained_run / "run_config.json").write_text('{"dataset": "image_folder"}')
    data = ["--dataset=image_folder", f"--data_dir={image_folder}"]
    cases = [
        ([f"--model={garbage_onnx}", *data], [f"--model={garbage_onnx}", "is not a readable ONNX model", "Protobuf"]),
        ([f"--model={text_file}", *data], [f"--model={text_file}", "is a file but not an .onnx file",
                                           "training run directory"]),
        ([f"--model={saved_model}", *data], [f"--model={saved_model}", "is not a readable SavedModel"]),
        ([f"--model={saved_model / 'saved_model.pb'}", *data], ["is a file", f"SavedModel folder {saved_model}"]),
        ([f"--model={untrained_run}"], [f"--model={untrained_run}", "without a checkpoint", "train the model first"]),
        ([f"--model={tmp_path}", *data], [f"--model={tmp_path}", "no run_config.json, no saved_model.pb"]),
        (["--dataset=image_folder"], ["--model is required"]),
    ]
    for arguments, fragments in cases:
        assert_one_line_error(run_evaluate(*arguments), *fragments)


def test_unwritable_output_folder(tmp_path, garbage_onnx):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_evaluate(f"--model={garbage_onnx}", "--dataset=image_folder", f"--output={blocker}/m.json")
    assert_one_line_error(result, f"cannot write to the folder {blocker}", "choose another --output")
    result = run_evaluate(f"--model={garbage_onnx}", "--dataset=image_folder", f"--output={tmp_path}")
    assert_one_line_error(result, f"--output={tmp_path} is a folder")


def test_missing_dataset_advice_names_existing_flag(tmp_path):
    model = write_flatten_onnx(tmp_path / "flatten.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_evaluate(f"--model={model}", "--dataset=cub", f"--data_dir={empty}")
    assert_one_line_error(result, str(empty), "--download")
    help_text = run_evaluate("--helpfull").stdout
    assert "--[no]download" in help_text
    assert "--[no]skip_bad_images" in help_text


def test_image_split_too_small(tmp_path):
    model = write_flatten_onnx(tmp_path / "flatten.onnx")
    # Two classes: the test split contains the second, which has one image.
    folder = write_image_folder(tmp_path / "images", [2, 1])
    result = run_evaluate(f"--model={model}", "--dataset=image_folder", f"--data_dir={folder}")
    assert_one_line_error(result, "--split=test", "contains 1 images", "at least 2")


# === Outputs ===


def test_output_folder_is_created(tmp_path, image_folder):
    model = write_flatten_onnx(tmp_path / "flatten.onnx")
    output = tmp_path / "missing" / "dir" / "m.json"
    result = run_evaluate(f"--model={model}", "--dataset=image_folder", f"--data_dir={image_folder}",
                          f"--output={output}", "--grid_queries=2", "--grid_k=2", "--batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_folder test split, 6 images, 2 classes" in result.stdout
    metrics = json.loads(output.read_text())
    assert 0.0 <= metrics["recall@1"] <= 1.0
    assert output.with_suffix(".png").is_file()


def test_damaged_jpeg_is_named(tmp_path, image_folder):
    # The test split contains the last half of the sorted classes: class_2 and class_3.
    damaged = os.path.join(image_folder, "class_3", "damaged.jpg")
    mini.write_damaged_jpeg(damaged)
    model = write_flatten_onnx(tmp_path / "flatten.onnx")
    result = run_evaluate(f"--model={model}", "--dataset=image_folder", f"--data_dir={image_folder}",
                          f"--output={tmp_path / 'm.json'}", "--grid_queries=0")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index(f"{PROGRAM}: error:"):]
    assert "1 image file of the test split fails" in message
    assert damaged in message


# === Settings recorded by the training run ===


def test_run_data_dir_is_default(tmp_path):
    missing = tmp_path / "moved_images"
    run = write_fake_run(tmp_path / "run", dataset="image_folder", image_size=TINY_IMAGE_SIZE, data_dir=str(missing),
                         test_class_fraction=0.5)
    result = run_evaluate(f"--model={run}")
    assert_one_line_error(result, f"the data_dir {missing} recorded in {run}/run_config.json", "pass --data_dir")


def test_run_test_class_fraction_is_default(tmp_path):
    # Four classes of one image each. The run's fraction 0.25 holds out one class, so the
    # test split has one image. The flag default 0.5 would hold out two.
    folder = write_image_folder(tmp_path / "images", [1, 1, 1, 1])
    run = write_fake_run(tmp_path / "run", dataset="image_folder", image_size=TINY_IMAGE_SIZE, data_dir=folder,
                         test_class_fraction=0.25)
    result = run_evaluate(f"--model={run}")
    assert_one_line_error(result, "--split=test", "contains 1 images")
    assert "differs from the run's" not in result.stderr


def test_other_test_class_fraction_warns(tmp_path):
    folder = write_image_folder(tmp_path / "images", [1, 1, 1, 1])
    empty = tmp_path / "empty"
    empty.mkdir()
    run = write_fake_run(tmp_path / "run", dataset="image_folder", image_size=TINY_IMAGE_SIZE, data_dir=folder,
                         test_class_fraction=0.25)
    # The empty --data_dir stops the command after the settings are resolved.
    result = run_evaluate(f"--model={run}", "--test_class_fraction=0.75", f"--data_dir={empty}")
    assert_one_line_error(result, "no class folders found", str(empty))
    assert "--test_class_fraction=0.75 differs from the run's 0.25" in result.stderr


def test_run_without_recorded_settings_warns(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = write_fake_run(tmp_path / "run", dataset="image_folder", image_size=TINY_IMAGE_SIZE)
    result = run_evaluate(f"--model={run}", f"--data_dir={empty}")
    assert_one_line_error(result, "no class folders found")
    assert "records no test_class_fraction" in result.stderr
