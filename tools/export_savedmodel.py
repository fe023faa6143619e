"""Export a training run's checkpoint as a versioned SavedModel for TensorFlow Serving.

    python tools/export_savedmodel.py --model_dir=runs/cub_hdml

writes saved_models/cub_hdml/<next version>/ with two signatures: `serving_default`
(float32 RGB images [batch, S, S, 3] on the 0-255 scale, preprocessed like evaluation) and
`serve_image_bytes` (encoded JPEG or PNG files, string [batch], preprocessed in the graph).
Both return the L2-normalised `embedding`. See docs/serving.md for requests.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdml_tf import export  # noqa: E402

PROGRAM = "export_savedmodel"
FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory of python -m hdml_tf.train to export.")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to export, such as RUN/ckpt-500 (default: the latest).")
flags.DEFINE_string("export_base", "saved_models", "Folder that holds one subfolder per model name.")
flags.DEFINE_string("name", None, "Model name, the subfolder of --export_base (default: the basename of --model_dir).")
flags.DEFINE_integer("version", None, "Version number to write (default: one more than the highest existing).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version instead of stopping with an error.")


def main(argv):
    if len(argv) > 1:
        export.exit_with_error(PROGRAM, f"unexpected arguments {argv[1:]}: pass every setting as a --flag")
    try:
        path = export.export_saved_model(
            FLAGS.model_dir,
            export_base=FLAGS.export_base,
            name=FLAGS.name,
            version=FLAGS.version,
            overwrite=FLAGS.overwrite,
            checkpoint=FLAGS.checkpoint,
        )
    except export.ExportError as error:
        export.exit_with_error(PROGRAM, error)
    except OSError as error:
        export.exit_with_error(PROGRAM, f"writing the SavedModel failed: {error}", exit_code=1)
    print(path)


if __name__ == "__main__":
    app.run(main, flags_parser=export.make_flags_parser(PROGRAM))
