"""tf.data input pipelines: sampled training batches and ordered evaluation batches.

Images leave the pipeline as float32 RGB on the 0-255 scale; the backbone's first layer
applies its own normalisation. Geometry follows HDML's protocol scaled to `image_size`:
resize to image_size * 256 / 227, then a random crop and horizontal flip for training or
the centre crop for evaluation (256 and 227 px at the default size).
"""

import numpy as np
import tensorflow as tf

from hdml_tf.data.splits import Split

RESIZE_RATIO = 256 / 227


def resize_size(image_size):
    """Return the side length images are resized to before cropping `image_size`."""
    return int(round(image_size * RESIZE_RATIO))


def decode_image(data):
    """Decode the bytes of a JPEG, PNG, BMP or GIF file to uint8 [H, W, 3].

    Grayscale and CMYK images become RGB, and a GIF gives its first frame.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _image_loader(split):
    """Return a function from an index tensor to that image as uint8 [H, W, 3]."""
    if split.images is not None:
        images = tf.constant(split.images)

        def load(index):
            image = tf.gather(images, index)
            if split.images.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            return image

        return load

    paths = tf.constant(split.paths.astype(str))

    def load_file(index):
        return decode_image(tf.io.read_file(tf.gather(paths, index)))

    return load_file


def _resize(image, image_size):
    side = resize_size(image_size)
    return tf.image.resize(tf.cast(image, tf.float32), [side, side], method="bilinear", antialias=True)


def preprocess_train(image, image_size, seed):
    """Resize, random-crop and random-flip one image; `seed` is a stateless [2] int seed."""
    resized = _resize(image, image_size)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    cropped = tf.image.stateless_random_crop(resized, [image_size, image_size, 3], seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def preprocess_eval(image, image_size):
    """Resize one image and take the centre crop."""
    resized = _resize(image, image_size)
    offset = (resize_size(image_size) - image_size) // 2
    return tf.image.crop_to_bounding_box(resized, offset, offset, image_size, image_size)


def make_train_dataset(split, sampler, image_size, start_step=0, num_steps=None, seed=0, replica_ids=None):
    """Build the training dataset: one sampled global batch per step from `start_step`.

    Args:
        split: the training `Split`.
        sampler: a sampler from `hdml_tf.data.samplers` (its batch size is the global one).
        image_size: side length of the training crops.
        start_step: first step, for resuming: batch s is the same in every run.
        num_steps: number of batches, or None for an endless dataset.
        seed: seed of the augmentation.
        replica_ids: None for whole global batches; otherwise the global ids of the
            replicas this input pipeline feeds. Each step then yields one batch per listed
            replica, in order: that replica's contiguous slice of the global batch.

    Returns:
        A `tf.data.Dataset` of (images float32 [b, S, S, 3], labels int32 [b]), where b is
        the global batch size, or the per-replica one with `replica_ids`. An image's
        augmentation depends only on the seed, the step and its position in the global
        batch, so any replica layout sees the same pixels.
    """
    global_batch_size = sampler.batch_size
    positions = np.arange(global_batch_size)
    batch_size = global_batch_size
    if replica_ids is not None:
        batch_size = global_batch_size // sampler.num_replicas
        positions = np.concatenate([np.arange(r * batch_size, (r + 1) * batch_size) for r in replica_ids])
    per_step = len(positions)
    labels = tf.constant(split.labels)
    load = _image_loader(split)

    def sample(step):
        indices = sampler.batch_indices(int(step))[positions]
        seeds = np.stack([np.full(per_step, seed), step * global_batch_size + positions], axis=1)
        return indices.astype(np.int64), seeds.astype(np.int64)

    def sample_batch(step):
        indices, seeds = tf.numpy_function(sample, [step], (tf.int64, tf.int64), stateful=False)
        indices.set_shape([per_step])
        seeds.set_shape([per_step, 2])
        return tf.data.Dataset.from_tensor_slices((indices, seeds))

    def load_example(index, image_seed):
        image = preprocess_train(load(index), image_size, image_seed)
        return image, tf.gather(labels, index)

    end = None if num_steps is None else start_step + num_steps
    steps = tf.data.Dataset.range(start_step, end) if end is not None else tf.data.Dataset.range(start_step, 2**62)
    dataset = steps.flat_map(sample_batch)
    dataset = dataset.map(load_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(split, image_size, batch_size=64, limit=None):
    """Build the evaluation dataset: every image of `split` in order, centre-cropped.

    Returns:
        A `tf.data.Dataset` of (images float32 [b, S, S, 3], labels int32 [b]); the last
        batch may be smaller.
    """
    count = len(split) if limit is None else min(limit, len(split))
    labels = tf.constant(split.labels)
    load = _image_loader(split)

    def load_example(index):
        return preprocess_eval(load(index), image_size), tf.gather(labels, index)

    dataset = tf.data.Dataset.range(count).map(load_example, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def cache_resized(split, image_size, batch_size=64):
    """Decode every image of a file-based split once and keep it resized, in memory.

    Returns a `Split` whose `images` are uint8 [n, R, R, 3] with R = resize_size(image_size),
    so training only crops and flips. Memory is n * R * R * 3 bytes: about 1.1 GiB for
    CUB's 5,864 training images at 227 px, 11.6 GiB for SOP's 59,551.
    """
    if split.images is not None:
        return split
    side = resize_size(image_size)
    load = _image_loader(split)

    def load_resized(index):
        return tf.cast(tf.round(tf.clip_by_value(_resize(load(index), image_size), 0.0, 255.0)), tf.uint8)

    dataset = tf.data.Dataset.range(len(split)).map(load_resized, num_parallel_calls=tf.data.AUTOTUNE)
    images = np.empty((len(split), side, side, 3), dtype=np.uint8)
    position = 0
    for batch in dataset.batch(batch_size):
        images[position : position + len(batch)] = batch.numpy()
        position += len(batch)
    return Split(labels=split.labels, class_names=split.class_names, images=images)
