"""SavedModel and ONNX export of a small trained run, checked through the loaders servers use.

One Fashion-MNIST run (64 px, 16-d embedding, 2 steps) is trained, then exported to a
SavedModel and to ONNX by the command-line tools, once per session. The tests load the
results with TF2, the TF1 loader of TensorFlow Serving, saved_model_cli and ONNX Runtime.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SIZE = 64
EMBEDDING_SIZE = 16
# Both paths run the same decode and resize ops, and JPEG decoding is deterministic. So the
# embedding served from encoded bytes equals the float path's up to the rounding of
# different batch sizes, measured below 1e-6 on a 2-core x86 CPU.
BYTES_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-5
# NumPy resizing in float64 against TensorFlow's float32 kernel, on the 0-255 scale.
NUMPY_PREPROCESS_TOLERANCE = 0.01

def run_command(arguments):
    return subprocess.run(
        arguments,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def run_tool(script, *arguments):
    return run_command([sys.executable, os.path.join(REPO, "tools", script), *arguments])


def run_embed(*arguments):
    return run_command([sys.executable, "-m", "hdml_tf.embed", *arguments])


def encode(pixels, image_format, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def smooth_image(height, width, seed):
    """Return a uint8 RGB image of gradients and noise, more like a photo than pure noise."""
    generator = np.random.default_rng(seed)
    rows = np.linspace(0, 255, height)[:, None, None]
    columns = np.linspace(255, 0, width)[None, :, None]
    pixels = 0.5 * rows + 0.3 * columns + generator.normal(0, 20, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


# === Session fixtures ===


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    model_dir = str(tmp_path_factory.mktemp("export") / "fashion_run")
    result = run_command([
        sys.executable, "-m", "hdml_tf.train", "--dataset=fashion_mnist", f"--model_dir={model_dir}",
        f"--image_size={IMAGE_SIZE}", f"--embedding_size={EMBEDDING_SIZE}", "--batch_size=4", "--max_steps=2",
        "--eval_max_images=100", "--eval_every_steps=2",
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


@pytest.fixture(scope="session")
def export_base(tmp_path_factory):
    return str(tmp_path_factory.mktemp("saved_models"))


@pytest.fixture(scope="session")
def exported(trained_run, export_base, tmp_path_factory):
    """Run both export tools once, side by side, and return (SavedModel version folder, ONNX file)."""
    onnx_file = str(tmp_path_factory.mktemp("onnx") / "fashion_run.onnx")
    commands = {
        "savedmodel": [sys.executable, os.path.join(REPO, "tools", "export_savedmodel.py"),
                       f"--model_dir={trained_run}", f"--export_base={export_base}"],
        "onnx": [sys.executable, os.path.join(REPO, "tools", "export_onnx.py"),
                 f"--model_dir={trained_run}", f"--output={onnx_file}"],
    }
    processes = {
        name: subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        for name, command in commands.items()
    }
    outputs = {name: process.communicate(timeout=600) for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, (name, outputs[name][1][-3000:])

    saved_model_path = os.path.join(export_base, "fashion_run", "1")
    assert outputs["savedmodel"][0].strip().splitlines()[-1] == saved_model_path
    assert "max |ONNX - TF|" in outputs["onnx"][0]
    return saved_model_path, onnx_file


@pytest.fixture(scope="session")
def saved_model_dir(exported):
    return exported[0]


@pytest.fixture(scope="session")
def onnx_path(exported):
    return exported[1]


@pytest.fixture(scope="session")
def keras_embedder(trained_run):
    from hdml_tf import export

    embedder, _, _ = export.load_embedder(trained_run)
    return embedder


@pytest.fixture(scope="session")
def loaded_model(saved_model_dir):
    import tensorflow as tf

    return tf.saved_model.load(saved_model_dir)


@pytest.fixture(scope="session")
def encoded_images():
    """Encoded test images of several sizes and formats, by file name."""
    generator = np.random.default_rng(7)
    return {
        "photo.jpg": encode(smooth_image(120, 90, seed=1), "JPEG", quality=90),
        "noise.jpg": encode(generator.integers(0, 256, (50, 70, 3), dtype=np.uint8), "JPEG", quality=75),
        "wide.png": encode(smooth_image(40, 160, seed=2), "PNG"),
        "gray.png": encode(smooth_image(64, 64, seed=3)[..., 0], "PNG"),
    }


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, encoded_images):
    """A folder tree of the encoded images, a non-image file and a corrupt JPEG."""
    root = tmp_path_factory.mktemp("photos")
    (root / "nested" / "deeper").mkdir(parents=True)
    for index, (name, data) in enumerate(sorted(encoded_images.items())):
        folder = [root, root / "nested", root / "nested" / "deeper", root][index]
        (folder / name).write_bytes(data)
    (root / "nested" / "notes.txt").write_text("not an image")
    (root / "nested" / "broken.jpg").write_bytes(encoded_images["photo.jpg"][:300])
    return str(root)


def float_path_embeddings(loaded_model, encoded):
    """Embed encoded images through `serving_default` after decoding and preprocess_eval in Python."""
    import tensorflow as tf

    from hdml_tf.data.pipeline import preprocess_eval

    images = [
        preprocess_eval(tf.io.decode_image(data, channels=3, expand_animations=False), IMAGE_SIZE) for data in encoded
    ]
    return loaded_model.signatures["serving_default"](images=tf.stack(images))["embedding"].numpy()


def bytes_path_embeddings(loaded_model, encoded):
    import tensorflow as tf

    signature = loaded_model.signatures["serve_image_bytes"]
    return signature(image_bytes=tf.constant(encoded, dtype=tf.string))["embedding"].numpy()


# === SavedModel: loaders ===


def test_tf2_load_float_signature(loaded_model, keras_embedder):
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(0, 255, (5, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    expected = keras_embedder(images, training=False).numpy()
    signature = loaded_model.signatures["serving_default"]

    served = signature(images=tf.constant(images))["embedding"].numpy()
    single = signature(images=tf.constant(images[:1]))["embedding"].numpy()

    assert served.shape == (5, EMBEDDING_SIZE)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(single, expected[:1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_tf2_load_rejects_other_image_size(loaded_model):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded_model.signatures["serving_default"](images=tf.zeros([1, IMAGE_SIZE + 8, IMAGE_SIZE + 8, 3]))


def test_tf1_loader_runs_both_signatures(saved_model_dir, loaded_model, encoded_images):
    import tensorflow as tf

    images = np.random.default_rng(1).uniform(0, 255, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    encoded = list(encoded_images.values())

    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model_dir)
        float_signature = meta_graph.signature_def["serving_default"]
        bytes_signature = meta_graph.signature_def["serve_image_bytes"]
        float_result = session.run(
            float_signature.outputs["embedding"].name, {float_signature.inputs["images"].name: images}
        )
        bytes_result = session.run(
            bytes_signature.outputs["embedding"].name, {bytes_signature.inputs["image_bytes"].name: encoded}
        )

    expected_float = loaded_model.signatures["serving_default"](images=tf.constant(images))["embedding"].numpy()
    np.testing.assert_allclose(float_result, expected_float, atol=1e-5)
    np.testing.assert_allclose(bytes_result, bytes_path_embeddings(loaded_model, encoded), atol=1e-5)
    assert bytes_result.shape == (len(encoded), EMBEDDING_SIZE)


def test_saved_model_cli_show_lists_signatures(saved_model_dir):
    result = run_command(["saved_model_cli", "show", "--all", "--dir", saved_model_dir])
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = {
        block.split("'", 1)[0]: block for block in result.stdout.split("signature_def['")[1:]
    }

    float_block = blocks["serving_default"]
    assert "inputs['images'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 64, 64, 3)" in float_block
    assert "outputs['embedding'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 16)" in float_block

    bytes_block = blocks["serve_image_bytes"]
    assert "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in bytes_block
    assert "outputs['embedding'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 16)" in bytes_block
    assert "Method name is: tensorflow/serving/predict" in bytes_block


def test_saved_model_cli_run_input_exprs(saved_model_dir, keras_embedder, tmp_path):
    # saved_model_cli accepts only Python literals in --input_exprs, so the image is spelled out.
    image = np.random.default_rng(2).integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    expression = "images=" + repr(image.tolist())
    result = run_command([
        "saved_model_cli", "run", "--dir", saved_model_dir, "--tag_set", "serve",
        "--signature_def", "serving_default", "--input_exprs", expression, "--outdir", str(tmp_path),
    ])
    assert result.returncode == 0, result.stderr[-2000:]

    output = np.load(tmp_path / "embedding.npy")
    assert output.shape == (1, EMBEDDING_SIZE)
    np.testing.assert_allclose(output, keras_embedder(image, training=False).numpy(), atol=1e-5)


# === SavedModel: encoded images ===


def decode_rest_request(body, input_name):
    """Turn a TensorFlow Serving REST predict body into the string batch the server feeds.

    Handles the row format ("instances", objects keyed by input name or bare values) and
    the columnar format ("inputs", keyed by input name or a bare list), and the {"b64": ...}
    encoding of binary values.
    """
    request = json.loads(body)
    if "instances" in request:
        values = [item[input_name] if isinstance(item, dict) and "b64" not in item else item
                  for item in request["instances"]]
    else:
        inputs = request["inputs"]
        values = inputs[input_name] if isinstance(inputs, dict) else inputs
    return [base64.b64decode(value["b64"]) for value in values]


def test_rest_b64_json_matches_float_path(loaded_model, encoded_images):
    encoded = list(encoded_images.values())
    b64_values = [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded]
    bodies = {
        "row": json.dumps({"signature_name": "serve_image_bytes",
                           "instances": [{"image_bytes": value} for value in b64_values]}),
        "row, bare values": json.dumps({"signature_name": "serve_image_bytes", "instances": b64_values}),
        "columnar": json.dumps({"signature_name": "serve_image_bytes", "inputs": {"image_bytes": b64_values}}),
    }
    expected = float_path_embeddings(loaded_model, encoded)

    for request_format, body in bodies.items():
        received = decode_rest_request(body, "image_bytes")
        assert received == encoded, request_format
        served = bytes_path_embeddings(loaded_model, received)
        np.testing.assert_allclose(served, expected, atol=BYTES_TOLERANCE, err_msg=request_format)


def test_bytes_signature_preprocesses_like_eval(loaded_model, encoded_images):
    # One image alone and in a batch of images of other sizes gives the same embedding.
    encoded = list(encoded_images.values())
    batch = bytes_path_embeddings(loaded_model, encoded)
    alone = bytes_path_embeddings(loaded_model, encoded[:1])
    np.testing.assert_allclose(alone, batch[:1], atol=BYTES_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "malformed",
    [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n" + b"0" * 40, "truncated jpeg"],
)
def test_malformed_bytes_raise_invalid_argument(loaded_model, encoded_images, malformed):
    import tensorflow as tf

    if malformed == "truncated jpeg":
        malformed = encoded_images["photo.jpg"][:300]
    with pytest.raises(tf.errors.InvalidArgumentError):
        bytes_path_embeddings(loaded_model, [encoded_images["photo.jpg"], malformed])

    # The model keeps serving afterwards.
    assert bytes_path_embeddings(loaded_model, [encoded_images["photo.jpg"]]).shape == (1, EMBEDDING_SIZE)


# === ONNX ===


def test_onnx_graph_interface(onnx_path):
    import onnx

    model = onnx.load(onnx_path)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output

    def dims(value):
        return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]

    assert graph_input.name == "images"
    assert dims(graph_input) == ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]
    assert graph_output.name == "embedding"
    assert dims(graph_output) == ["batch", EMBEDDING_SIZE]
    assert {opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")} == {17}


def test_onnx_parity_with_tensorflow(onnx_path, keras_embedder, trained_run):
    import onnxruntime

    from hdml_tf import export, runs

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    samples = export.parity_images(runs.read_run_config(trained_run), count=7, seed=11)
    assert set(samples) == {"random", "fashion_mnist test"}

    for description, images in samples.items():
        expected = keras_embedder(images, training=False).numpy()
        for batch in (images, images[:1]):
            (actual,) = session.run(["embedding"], {"images": batch})
            assert actual.shape == (len(batch), EMBEDDING_SIZE)
            difference = np.max(np.abs(actual - expected[: len(batch)]))
            assert difference <= ONNX_TOLERANCE, (description, len(batch), difference)


def test_onnx_parity_failure_writes_nothing(trained_run, tmp_path, monkeypatch):
    from hdml_tf import export

    output = tmp_path / "model.onnx"
    monkeypatch.setattr(export, "convert_to_onnx", lambda fn, size, path, opset: open(path, "wb").close())
    monkeypatch.setattr(export, "onnx_max_difference", lambda path, fn, samples: 3e-4)

    with pytest.raises(export.ParityError, match=r"up to 0\.0003 \(tolerance 1e-05\)"):
        export.export_onnx(trained_run, str(output), num_parity_images=2)
    assert os.listdir(tmp_path) == []


def test_numpy_preprocessing_matches_preprocess_eval():
    import tensorflow as tf

    from hdml_tf import export
    from hdml_tf.data.pipeline import preprocess_eval

    generator = np.random.default_rng(3)
    # Upscaling (28 px), downscaling and non-square inputs at both crop sizes.
    for shape, image_size in [((28, 28, 3), 64), ((300, 400, 3), 227), ((500, 333, 3), 64), ((64, 90, 3), 64)]:
        image = generator.integers(0, 256, shape, dtype=np.uint8)
        expected = preprocess_eval(tf.constant(image), image_size).numpy()
        actual = export.preprocess_eval_numpy(image, image_size)
        assert actual.shape == (image_size, image_size, 3)
        assert np.max(np.abs(actual - expected)) <= NUMPY_PREPROCESS_TOLERANCE, shape


# === Versions and atomic writing ===


def write_marker(text):
    def write(path):
        with open(os.path.join(path, "saved_model.pb"), "w") as stream:
            stream.write(text)

    return write


def read_marker(path):
    with open(os.path.join(path, "saved_model.pb")) as stream:
        return stream.read()


def test_next_version_ignores_non_integer_folders(tmp_path):
    from hdml_tf import export

    for name in ("1", "3", ".tmp-4-abc", "notes", "2b"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    assert export.next_version(str(tmp_path)) == 4

    (tmp_path / "007").mkdir()
    assert export.next_version(str(tmp_path)) == 8
    assert export.next_version(str(tmp_path / "missing")) == 1


def test_interrupted_write_leaves_no_version(tmp_path):
    from hdml_tf import export

    def crash_after_writing(path):
        write_marker("complete")(path)
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        export.write_version_atomically(str(tmp_path), 1, crash_after_writing)
    assert os.listdir(tmp_path) == []


def test_concurrent_export_gets_next_version(tmp_path):
    from hdml_tf import export

    def write_while_another_export_finishes(path):
        write_marker("second")(path)
        (tmp_path / "1").mkdir()
        write_marker("first")(tmp_path / "1")

    path = export.write_version_atomically(str(tmp_path), None, write_while_another_export_finishes)
    assert path == str(tmp_path / "2")
    assert read_marker(tmp_path / "1") == "first"
    assert read_marker(tmp_path / "2") == "second"
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_overwrite_replaces_version(tmp_path):
    from hdml_tf import export

    export.write_version_atomically(str(tmp_path), 1, write_marker("first"))
    with pytest.raises(export.ExportError, match="--overwrite"):
        export.write_version_atomically(str(tmp_path), 1, write_marker("second"))
    assert read_marker(tmp_path / "1") == "first"
    assert sorted(os.listdir(tmp_path)) == ["1"]

    path = export.write_version_atomically(str(tmp_path), 1, write_marker("second"), overwrite=True)
    assert path == str(tmp_path / "1")
    assert read_marker(tmp_path / "1") == "second"
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_overwrite_restores_old_version_when_rename_fails(tmp_path, monkeypatch):
    from hdml_tf import export

    export.write_version_atomically(str(tmp_path), 1, write_marker("first"))
    real_rename = os.rename

    def failing_rename(source, destination):
        if os.path.basename(source).startswith(".tmp-"):
            raise OSError(28, "No space left on device")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        export.write_version_atomically(str(tmp_path), 1, write_marker("second"), overwrite=True)
    assert read_marker(tmp_path / "1") == "first"
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_plan_rejects_existing_version(tmp_path):
    from hdml_tf import export

    (tmp_path / "run" / "1").mkdir(parents=True)
    with pytest.raises(export.ExportError, match=r"run/1 already exists: pass --overwrite.*write version 2"):
        export.plan_saved_model_version(str(tmp_path), "run", version=1)
    assert export.plan_saved_model_version(str(tmp_path), "run", version=1, overwrite=True)[1] == 1
    assert export.plan_saved_model_version(str(tmp_path), "run")[1] == 2


def test_second_export_gets_next_version(trained_run, export_base, saved_model_dir):
    from hdml_tf import export

    first_model = read_bytes(os.path.join(saved_model_dir, "saved_model.pb"))
    path = export.export_saved_model(trained_run, export_base=export_base)
    assert path == os.path.join(export_base, "fashion_run", "2")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert read_bytes(os.path.join(saved_model_dir, "saved_model.pb")) == first_model
    assert sorted(os.listdir(os.path.dirname(path))) == ["1", "2"]


def test_interrupted_export_keeps_old_version(trained_run, saved_model_dir, tmp_path, monkeypatch):
    from hdml_tf import export

    model_base = tmp_path / "fashion_run"
    shutil.copytree(saved_model_dir, model_base / "1")
    (model_base / "1" / "marker").write_text("the version before the export")
    real_build = export.build_export_archive
    written = []

    def build_crashing_archive(embedder, image_size):
        archive = real_build(embedder, image_size)
        real_write_out = archive.write_out

        def write_out_then_crash(path, **kwargs):
            real_write_out(path, **kwargs)
            written.extend(os.listdir(path))
            raise KeyboardInterrupt("simulated interruption after writing")

        archive.write_out = write_out_then_crash
        return archive

    monkeypatch.setattr(export, "build_export_archive", build_crashing_archive)
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(trained_run, export_base=str(tmp_path), version=1, overwrite=True)

    assert "saved_model.pb" in written
    assert sorted(os.listdir(model_base)) == ["1"]
    assert (model_base / "1" / "marker").read_text() == "the version before the export"


def read_bytes(path):
    with open(path, "rb") as stream:
        return stream.read()


# === Command-line errors ===


@pytest.fixture(scope="session")
def run_without_checkpoint(trained_run, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("untrained_run")
    shutil.copy(os.path.join(trained_run, "run_config.json"), model_dir)
    return str(model_dir)


def test_export_savedmodel_errors(tmp_path, trained_run, run_without_checkpoint, saved_model_dir, export_base):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    cases = [
        ([], ["--model_dir is required"]),
        ([f"--model_dir={tmp_path / 'missing'}"], [f"--model_dir={tmp_path / 'missing'} does not exist"]),
        ([f"--model_dir={tmp_path}"], ["has no run_config.json", "hdml_tf.train"]),
        ([f"--model_dir={run_without_checkpoint}"], ["no checkpoint found", "train the model first"]),
        ([f"--model_dir={trained_run}", f"--checkpoint={trained_run}/ckpt-99"], ["ckpt-99 not found"]),
        ([f"--model_dir={trained_run}", f"--export_base={not_a_folder}/models"],
         [f"cannot write to the folder {not_a_folder}/models/fashion_run", "choose another --export_base"]),
        ([f"--model_dir={trained_run}", f"--export_base={export_base}", "--version=1"],
         [f"{saved_model_dir} already exists", "--overwrite", "omit --version"]),
        ([f"--model_dir={trained_run}", "--version=0"], ["--version=0 must be a positive integer"]),
        ([f"--model_dir={trained_run}", "--name=../x"], ["--name='../x' is not a valid model name"]),
        (["--no_such_flag=1"], ["no_such_flag"]),
        (["--version=two"], ["--version", "two"]),
    ]
    for arguments, fragments in cases:
        assert_one_line_error(run_tool("export_savedmodel.py", *arguments), "export_savedmodel", *fragments)


def test_export_onnx_errors(tmp_path, trained_run):
    (tmp_path / "file").write_text("")
    cases = [
        ([f"--model_dir={trained_run}"], ["--output is required"]),
        ([f"--model_dir={trained_run}", f"--output={tmp_path}"], [f"--output={tmp_path} is a folder"]),
        ([f"--model_dir={trained_run}", f"--output={tmp_path}/m.onnx", "--opset=19"], ["--opset=19", "11 to 18"]),
        ([f"--model_dir={tmp_path / 'missing'}", f"--output={tmp_path}/m.onnx"], ["does not exist"]),
        ([f"--model_dir={trained_run}", f"--output={tmp_path}/m.onnx", "--tolerance=-1"], ["--tolerance=-1"]),
        ([f"--model_dir={trained_run}", f"--output={tmp_path}/file/m.onnx"], ["cannot write to the folder"]),
    ]
    for arguments, fragments in cases:
        assert_one_line_error(run_tool("export_onnx.py", *arguments), "export_onnx", *fragments)
    assert "DecodeJpeg" in run_tool("export_onnx.py", "--helpfull").stdout


def test_embed_errors(tmp_path, image_folder, onnx_path):
    garbage_onnx = tmp_path / "garbage.onnx"
    garbage_onnx.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    damaged_saved_model = tmp_path / "damaged"
    damaged_saved_model.mkdir()
    (damaged_saved_model / "saved_model.pb").write_bytes(b"\x00 damaged")
    cases = [
        ([f"--images={image_folder}", f"--output={tmp_path}/e.npz"], ["--model is required"]),
        ([f"--model={tmp_path}/none.onnx", f"--images={image_folder}", f"--output={tmp_path}/e.npz"],
         ["none.onnx not found"]),
        ([f"--model={tmp_path}", f"--images={image_folder}", f"--output={tmp_path}/e.npz"], ["no saved_model.pb"]),
        ([f"--model={onnx_path}", f"--images={tmp_path}/none", f"--output={tmp_path}/e.npz"], ["does not exist"]),
        ([f"--model={onnx_path}", f"--images={image_folder}", f"--output={tmp_path}/e.csv"], ["must end in .npz or .npy"]),
        ([f"--model={onnx_path}", f"--images={tmp_path}", f"--output={tmp_path}/e.npz"], ["contains no .jpg"]),
        ([f"--model={garbage_onnx}", f"--images={image_folder}", f"--output={tmp_path}/e.npz"],
         [f"--model={garbage_onnx} is not a readable ONNX model", "Protobuf"]),
        ([f"--model={damaged_saved_model}", f"--images={image_folder}", f"--output={tmp_path}/e.npz"],
         [f"--model={damaged_saved_model} is not a readable SavedModel"]),
    ]
    for arguments, fragments in cases:
        assert_one_line_error(run_embed(*arguments), "hdml_tf.embed", *fragments)


# === Embedding folders ===


def test_embed_cli_saved_model_folder(export_base, saved_model_dir, loaded_model, image_folder, encoded_images,
                                      tmp_path):
    output = tmp_path / "embeddings.npz"
    # The model folder, not a version: the highest version is used, as TensorFlow Serving does.
    result = run_embed(f"--model={os.path.dirname(saved_model_dir)}", f"--images={image_folder}",
                       f"--output={output}", "--skip_bad_images", "--batch_size=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 1 of 5 images" in result.stderr

    stored = np.load(output)
    expected_paths = ["gray.png", "nested/deeper/photo.jpg", "nested/noise.jpg", "wide.png"]
    assert list(stored["paths"]) == expected_paths
    assert list(stored["skipped"]) == ["nested/broken.jpg"]
    assert stored["embeddings"].dtype == np.float32
    expected = float_path_embeddings(loaded_model, [encoded_images[path.split("/")[-1]] for path in expected_paths])
    np.testing.assert_allclose(stored["embeddings"], expected, atol=BYTES_TOLERANCE)


def test_embed_onnx_matches_saved_model(saved_model_dir, onnx_path, image_folder):
    from hdml_tf import embed

    paths = embed.find_images(image_folder)
    results = {}
    for kind, path in (("saved_model", saved_model_dir), ("onnx", onnx_path)):
        embedder = embed.load_embedder(kind, path)
        results[kind] = embed.embed_folder(embedder, image_folder, paths, batch_size=2, skip_bad_images=True)

    saved_embeddings, saved_paths, saved_skipped = results["saved_model"]
    onnx_embeddings, onnx_paths, onnx_skipped = results["onnx"]
    assert saved_paths == onnx_paths
    assert saved_skipped == onnx_skipped == ["nested/broken.jpg"]
    assert np.max(np.abs(onnx_embeddings - saved_embeddings)) <= ONNX_TOLERANCE


def test_embed_bad_image_names_file(onnx_path, image_folder):
    from hdml_tf import embed

    embedder = embed.load_embedder("onnx", onnx_path)
    with pytest.raises(embed.BadImageError, match=r"cannot decode .*nested/broken\.jpg \(.*JPEG"):
        embed.embed_folder(embedder, image_folder, embed.find_images(image_folder))


def test_embed_npy_output_writes_paths_txt(tmp_path):
    from hdml_tf import embed

    embeddings = np.eye(3, 4, dtype=np.float32)
    written = embed.write_embeddings(str(tmp_path / "out.npy"), embeddings, ["a.jpg", "b/c.png", "d é.png"], [])
    assert written == [str(tmp_path / "out.npy"), str(tmp_path / "out.txt")]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), embeddings)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == ["a.jpg", "b/c.png", "d é.png"]
    assert sorted(os.listdir(tmp_path)) == ["out.npy", "out.txt"]
