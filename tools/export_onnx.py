"""Convert a training run's embedder to ONNX for ONNX Runtime and check it against TensorFlow.

    python tools/export_onnx.py --model_dir=runs/cub_hdml --output=cub_hdml.onnx

The ONNX model has the input `images` (float32 RGB [batch, S, S, 3] on the 0-255 scale,
resized and centre-cropped like evaluation; S is the run's image_size) and the output
`embedding` (L2-normalised). Before the file is written, ONNX Runtime is compared with
TensorFlow on random images and, when the run's dataset is found, on its test images. If
they differ by more than --tolerance, the tool writes nothing and exits with code 1.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdml_tf import export  # noqa: E402

PROGRAM = "export_onnx"
FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory of python -m hdml_tf.train to export.")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to export, such as RUN/ckpt-500 (default: the latest).")
flags.DEFINE_string(
    "output",
    None,
    "ONNX file to write (replaced if it exists). The model takes decoded, preprocessed float images: "
    "decoding and the antialiased resize cannot be exported, because tf2onnx 1.17 converts neither "
    "DecodeJpeg/DecodeImage nor ScaleAndTranslate and ONNX Runtime rejects the result, so decode and "
    "preprocess before calling it (docs/serving.md).",
)
flags.DEFINE_integer("opset", export.DEFAULT_OPSET, f"ONNX opset, {export.MIN_OPSET} to {export.MAX_OPSET}.")
flags.DEFINE_float("tolerance", 1e-5, "Largest accepted absolute difference between ONNX Runtime and TensorFlow embeddings.")
flags.DEFINE_string("data_dir", None, "Folder of the run's dataset, for real test images in the check (default: the loader's).")
flags.DEFINE_integer("num_parity_images", 8, "Number of random images, and of test images, in the check.")


def main(argv):
    if len(argv) > 1:
        export.exit_with_error(PROGRAM, f"unexpected arguments {argv[1:]}: pass every setting as a --flag")
    if FLAGS.tolerance < 0:
        export.exit_with_error(PROGRAM, f"--tolerance={FLAGS.tolerance} must be 0 or more")
    if FLAGS.num_parity_images < 1:
        export.exit_with_error(PROGRAM, f"--num_parity_images={FLAGS.num_parity_images} must be at least 1")
    try:
        difference = export.export_onnx(
            FLAGS.model_dir,
            FLAGS.output,
            opset=FLAGS.opset,
            tolerance=FLAGS.tolerance,
            checkpoint=FLAGS.checkpoint,
            data_dir=FLAGS.data_dir,
            num_parity_images=FLAGS.num_parity_images,
        )
    except export.ExportError as error:
        export.exit_with_error(PROGRAM, error)
    except export.ParityError as error:
        export.exit_with_error(PROGRAM, error, exit_code=1)
    except OSError as error:
        export.exit_with_error(PROGRAM, f"writing the ONNX file failed: {error}", exit_code=1)
    print(f"{FLAGS.output} (max |ONNX - TF| = {difference:.3g})")


if __name__ == "__main__":
    app.run(main, flags_parser=export.make_flags_parser(PROGRAM))
