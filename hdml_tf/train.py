"""Train an HDML embedder: `python -m hdml_tf.train --flagfile=cub.flags`.

Rerunning the same command resumes from the latest checkpoint in --model_dir. Evaluation
on the held-out classes runs every --eval_every_steps steps and at the end, and writes
--model_dir/metrics.json.
"""

import os
import sys

from absl import app, flags, logging

from hdml_tf import data as data_lib
from hdml_tf.backbones import BACKBONES, MIN_IMAGE_SIZES
from hdml_tf.distribute import STRATEGIES
from hdml_tf.model import LOSSES, NAN_POLICIES, PRECISIONS

FLAGS = flags.FLAGS

# === Data ===
flags.DEFINE_enum("dataset", "fashion_mnist", sorted(data_lib.DATASETS), "Dataset to train and evaluate on.")
flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (see README for each dataset).")
flags.DEFINE_bool("download", False, "Allow downloads: the dataset through tensorflow-datasets when its files are not in --data_dir, and "
                  "--pretrained=imagenet weights through Keras when they are not in its cache.")
flags.DEFINE_bool("allow_partial_dataset", False, "Accept image and class counts other than the official ones.")
flags.DEFINE_bool("skip_bad_images", False, "Skip unreadable or missing images (counted in the log) instead of failing.")
flags.DEFINE_float("test_class_fraction", 0.5, "image_folder only: fraction of the sorted classes held out for testing.")
flags.DEFINE_bool("cache_images", False, "Decode and resize the training images once and keep them in memory.")
flags.DEFINE_integer("image_size", 227, "Side of the square training and test crops, in pixels.")

# === Model and loss ===
flags.DEFINE_string("model_dir", None, "Run directory for checkpoints, logs and metrics.json.")
flags.DEFINE_enum("loss", "npair", LOSSES, "Metric loss; npair and contrastive use N-pair batches.")
flags.DEFINE_bool("hdml", True, "Train with hardness-aware synthesis; --nohdml trains the baseline on the same data.")
flags.DEFINE_enum("backbone", "googlenet", sorted(BACKBONES), "Backbone network.")
flags.DEFINE_string("pretrained", None, "Backbone weights to start from: a GoogLeNet .npy or .mat file, a .weights.h5 file, a run directory or "
                    "checkpoint, or imagenet for the Keras Applications backbones (see docs/pretrained.md).")
flags.DEFINE_integer("embedding_size", 128, "Embedding dimension d.")
flags.DEFINE_float("alpha", 90.0, "Hardness factor alpha in lambda = exp(-alpha / J_avg).")
flags.DEFINE_float("beta", 1e4, "Factor beta in the real-loss weight exp(-beta / J_gen_avg).")
flags.DEFINE_float("gen_lambda", 0.5, "Trade-off between J_recon (1 - gen_lambda) and J_soft (gen_lambda).")
flags.DEFINE_float("softmax_factor", 1e4, "Scale of J_soft.")
flags.DEFINE_float("l2_reg", 3e-3, "N-pair embedding-norm regulariser.")
flags.DEFINE_float("weight_decay", 5e-3, "Weight decay factor on backbone and head kernels and biases.")
flags.DEFINE_float("margin", 1.0, "Margin of the triplet and contrastive losses.")
flags.DEFINE_integer("block_size", 64, "Steps per block of the J_avg and J_gen_avg averages.")

# === Optimisation ===
flags.DEFINE_integer("batch_size", 128, "Global batch size in images (2N for N-pair, 3T for triplet).")
flags.DEFINE_integer("max_steps", 8000, "Total number of training steps.")
flags.DEFINE_float("lr", 7e-5, "Learning rate of the backbone and embedding head (J_metric).")
flags.DEFINE_float("lr_gen", 1e-2, "Learning rate of the generator (J_gen).")
flags.DEFINE_float("lr_cls", 1e-3, "Learning rate of the softmax classifier (J_cls).")
flags.DEFINE_list("lr_decay_steps", ["5632", "6848"], "Steps at which --lr is multiplied by --lr_decay_factor.")
flags.DEFINE_float("lr_decay_factor", 0.5, "Factor applied to --lr at each --lr_decay_steps step.")
flags.DEFINE_enum("precision", "float32", PRECISIONS,
                  "Compute precision; mixed_* keep float32 variables, losses and schedule state.")
flags.DEFINE_enum("nan_policy", "stop", NAN_POLICIES, "On a NaN or Inf loss: stop with an error, or skip that update.")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, sampling and augmentation.")
flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism: bitwise repeatable runs, somewhat slower.")

# === Run ===
flags.DEFINE_integer("eval_every_steps", 500, "Evaluate on the test classes every this many steps.")
flags.DEFINE_integer("eval_batch_size", 128, "Batch size of evaluation.")
flags.DEFINE_integer("eval_max_images", None, "Evaluate on the first this many test images only (quick checks).")
flags.DEFINE_list("recall_ks", ["1", "2", "4", "8"], "K values of Recall@K.")
flags.DEFINE_integer("checkpoint_every_steps", 500, "Save a checkpoint every this many steps.")
flags.DEFINE_integer("keep_checkpoints", 3, "Number of recent checkpoints kept.")
flags.DEFINE_integer("log_every_steps", 20, "Log losses and images/s every this many steps.")
flags.DEFINE_enum("strategy", "mirrored", STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_integer("cpu_replicas", 1, "Without GPUs: number of logical CPU devices to mirror over.")


class UsageError(ValueError):
    """A flag value that cannot work; the message names the flag, the value and the fix."""


def _int_list(name, values):
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise UsageError(f"--{name}={','.join(values)} must be a comma-separated list of integers") from None


def validate_flags():
    """Check flag values that absl cannot check alone; raise UsageError naming the flag."""
    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required: the folder for checkpoints and metrics.json")
    min_size = MIN_IMAGE_SIZES[FLAGS.backbone]
    if FLAGS.image_size < min_size:
        raise UsageError(
            f"--image_size={FLAGS.image_size} is too small: --backbone={FLAGS.backbone} needs at least {min_size}"
        )
    positive = ("batch_size", "embedding_size", "eval_every_steps", "eval_batch_size", "checkpoint_every_steps",
                "log_every_steps", "keep_checkpoints", "block_size", "cpu_replicas")
    for name in positive:
        if FLAGS[name].value <= 0:
            raise UsageError(f"--{name}={FLAGS[name].value} must be a positive integer")
    if FLAGS.eval_max_images is not None and FLAGS.eval_max_images < 2:
        raise UsageError(
            f"--eval_max_images={FLAGS.eval_max_images} must be at least 2 (every query needs another image)"
        )
    if FLAGS.alpha <= 0:
        raise UsageError(f"--alpha={FLAGS.alpha} must be positive: lambda = exp(-alpha / J_avg) must stay below 1")
    if FLAGS.beta < 0:
        raise UsageError(f"--beta={FLAGS.beta} must be 0 or more")
    if FLAGS.max_steps < 0:
        raise UsageError(f"--max_steps={FLAGS.max_steps} must be 0 (evaluate only) or more")
    for name in ("lr", "lr_gen", "lr_cls"):
        if FLAGS[name].value <= 0:
            raise UsageError(f"--{name}={FLAGS[name].value} must be positive")
    if not 0.0 < FLAGS.test_class_fraction < 1.0:
        raise UsageError(f"--test_class_fraction={FLAGS.test_class_fraction} must lie strictly between 0 and 1")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise UsageError(f"--data_dir={FLAGS.data_dir} does not exist or is not a folder")
    if FLAGS.pretrained:
        from hdml_tf.backbones import pretrained  # Imported only when used.

        try:
            pretrained.validate_source(FLAGS.pretrained, FLAGS.backbone, FLAGS.image_size, download=FLAGS.download)
        except pretrained.PretrainedWeightsError as error:
            # Messages about a file start with its path: "--pretrained=PATH does not exist".
            message = str(error)
            if not message.startswith(FLAGS.pretrained):
                message = f"{FLAGS.pretrained}: {message}"
            raise UsageError(f"--pretrained={message}") from None
    recall_ks = _int_list("recall_ks", FLAGS.recall_ks)
    if not recall_ks or min(recall_ks) < 1:
        raise UsageError(f"--recall_ks={','.join(FLAGS.recall_ks)} must be positive integers")
    decay_steps = _int_list("lr_decay_steps", FLAGS.lr_decay_steps)
    if list(decay_steps) != sorted(set(decay_steps)):
        raise UsageError(f"--lr_decay_steps={','.join(FLAGS.lr_decay_steps)} must be increasing")
    return recall_ks, decay_steps


def main(argv):
    # Imported here: flag parsing and `--help` do not need Keras or the model code.
    from hdml_tf import trainer

    try:
        if len(argv) > 1:
            raise UsageError(
                f"unexpected argument {argv[1]!r}: every setting is a flag such as --model_dir=DIR "
                f"(see --helpfull)"
            )
        recall_ks, decay_steps = validate_flags()
        trainer.run(FLAGS, recall_ks=recall_ks, lr_decay_steps=decay_steps)
    except trainer.TrainingInterrupted as interruption:
        logging.warning("%s", interruption)
        # The shell's convention for a process ended by a signal, so job scripts can tell
        # an interrupted run from a finished one.
        sys.exit(128 + interruption.signal_number)
    except (UsageError, *trainer.USER_ERRORS) as error:
        print(f"hdml_tf.train: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
