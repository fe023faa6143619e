"""Input pipeline speed against the training step it feeds, side by side in one run.

Writes a CUB-like image folder (JPEGs of 500 x 375 px) to a temporary directory, then
measures images/s of
  1. the training pipeline decoding JPEGs (parallel decode, resize, crop, flip, prefetch),
  2. the same pipeline on images cached resized in memory (`--cache_images`),
  3. the HDML N-pair training step of GoogLeNet on in-memory batches,
all at the same image size and batch. Prints a Markdown table with medians.

    python bench/bench_input_pipeline.py --image_size=227 --batch_size=32
"""

import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdml_tf import data as data_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 227, "Crop size in pixels.")
flags.DEFINE_integer("batch_size", 32, "Global batch size (N-pair: 2 x classes).")
flags.DEFINE_integer("num_classes", 40, "Classes in the synthetic folder.")
flags.DEFINE_integer("images_per_class", 10, "Images per class.")
flags.DEFINE_integer("pipeline_batches", 30, "Batches per pipeline measurement.")
flags.DEFINE_integer("train_steps", 3, "Timed training steps per measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements of each kind; the median is reported.")


def write_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(FLAGS.num_classes):
        folder = os.path.join(root, "train", f"class_{label:03d}")
        os.makedirs(folder)
        for number in range(FLAGS.images_per_class):
            # Smooth random images compress like photos, unlike white noise.
            small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
            image.save(os.path.join(folder, f"{number}.jpg"), quality=90)
    os.makedirs(os.path.join(root, "test", "other"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, "test", "other", "0.png"))


def pipeline_rate(split, sampler, repeat):
    dataset = data_lib.make_train_dataset(split, sampler, FLAGS.image_size, start_step=repeat * 1000,
                                          num_steps=FLAGS.pipeline_batches + 2)
    iterator = iter(dataset)
    next(iterator)  # start-up: thread pools and the first prefetch
    started = time.perf_counter()
    for _ in range(FLAGS.pipeline_batches):
        next(iterator)
    return FLAGS.pipeline_batches * FLAGS.batch_size / (time.perf_counter() - started)


def train_rate(split, sampler):
    import tensorflow as tf

    from hdml_tf.backbones import build_backbone
    from hdml_tf.model import HDMLConfig, HDMLModel

    model = HDMLModel(build_backbone("googlenet"), HDMLConfig(num_classes=split.num_classes, embedding_size=128))
    model.compile()
    batch = next(iter(data_lib.make_train_dataset(split, sampler, FLAGS.image_size, num_steps=1)))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(dataset, steps_per_epoch=1, verbose=0)  # trace and warm up
    rates = []
    for _ in range(FLAGS.repeats):
        started = time.perf_counter()
        model.fit(dataset, steps_per_epoch=FLAGS.train_steps, verbose=0)
        rates.append(FLAGS.train_steps * FLAGS.batch_size / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        write_folder(root)
        split = data_lib.load_dataset("image_folder", data_dir=root).train
        sampler = data_lib.make_sampler("npair", split.labels, FLAGS.batch_size)
        decoded = statistics.median(pipeline_rate(split, sampler, repeat) for repeat in range(FLAGS.repeats))
        cached_split = data_lib.cache_resized(split, FLAGS.image_size)
        cached = statistics.median(pipeline_rate(cached_split, sampler, repeat) for repeat in range(FLAGS.repeats))
        training = train_rate(cached_split, sampler)
    print(f"| what ({FLAGS.image_size} px, batch {FLAGS.batch_size}) | images/s (median of {FLAGS.repeats}) "
          f"| ratio to the training step |")
    print("|---|---:|---:|")
    print(f"| pipeline, JPEG decode | {decoded:.1f} | {decoded / training:.1f} |")
    print(f"| pipeline, cached resized images | {cached:.1f} | {cached / training:.1f} |")
    print(f"| HDML N-pair training step (GoogLeNet) | {training:.2f} | 1.0 |")


if __name__ == "__main__":
    app.run(main)
