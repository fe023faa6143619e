"""Find image files that pass the load-time checks but fail to decode.

The checks in `hdml_tf.data.files` read only each file's first and last bytes, so a
JPEG whose entropy-coded data is damaged passes them. The input pipeline then fails
inside tf.data with an `InvalidArgumentError` such as "jpeg::Uncompress failed" that
names the op but not the file. The functions here decode the files of a split one by
one, eagerly and with the pipeline's own `decode_image`, to name the failing files.

Typical use around a loop over a dataset built from `split`:

    try:
        for images, labels in make_eval_dataset(split, image_size):
            ...
    except tf.errors.InvalidArgumentError as error:
        raise_undecodable_image_error(split, error, split_name="test")
"""

import concurrent.futures
import os
import re
import time

import tensorflow as tf
from absl import logging

from hdml_tf.data.files import BadImageError
from hdml_tf.data.pipeline import decode_image

# Files named in a BadImageError. The search stops once it has found this many, which
# saves decoding the rest of a large split.
MAX_REPORTED_FILES = 5
# Files decoded between two checks of `limit`.
_CHUNK_SIZE = 256

# Eager TensorFlow errors start with "{{function_node ...}}" and end with " [Op:DecodeImage] name: ".
_FUNCTION_NODE_PREFIX = re.compile(r"^\{\{function_node [^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\].*$", re.DOTALL)


def _short_message(error):
    message = _FUNCTION_NODE_PREFIX.sub("", error.message)
    return _OP_SUFFIX.sub("", message).strip() or type(error).__name__


def decode_problem(path):
    """Read and decode the image file at `path` as the input pipeline does.

    Returns:
        None when it decodes, otherwise TensorFlow's error message without the op
        name, e.g. "jpeg::Uncompress failed. Invalid JPEG data or crop window.".
    """
    try:
        decode_image(tf.io.read_file(path))
    except tf.errors.OpError as error:
        return _short_message(error)
    return None


def find_undecodable_images(split, limit=None, num_threads=None):
    """Decode every file of `split` eagerly and return the ones that fail.

    Files are decoded with `tf.io.decode_image(channels=3, expand_animations=False)`,
    as in the input pipeline, in a thread pool. A file that decodes with a libjpeg
    warning (for example "Corrupt JPEG data: bad Huffman code") counts as decodable,
    because the pipeline accepts it too. Decoding a whole split takes minutes on a large
    dataset: a synthetic 500x375 JPEG took about 6.6 ms on one thread of a 2-core
    machine, and 2.7 ms per file with both cores busy.

    Args:
        split: a `Split`. A split held in memory (`split.images` set) has no files, so
            the result is empty.
        limit: stop once this many failing files are found; None decodes every file.
        num_threads: threads that decode; None uses one per CPU core.

    Returns:
        {path: error message} of the failing files, at most `limit` of them, in the
        order of `split.paths`. A missing or unreadable file is listed as well.
    """
    if split.paths is None:
        return {}
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} is invalid: it must be at least 1, or None for no limit")

    paths = [str(path) for path in split.paths]
    failures = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads or os.cpu_count() or 1) as executor:
        for start in range(0, len(paths), _CHUNK_SIZE):
            chunk = paths[start : start + _CHUNK_SIZE]
            for path, problem in zip(chunk, executor.map(decode_problem, chunk)):
                if problem is not None:
                    failures[path] = problem
            if limit is not None and len(failures) >= limit:
                break
    if limit is not None:
        failures = dict(list(failures.items())[:limit])
    return failures


def raise_undecodable_image_error(split, error, split_name=None, limit=MAX_REPORTED_FILES):
    """Raise a BadImageError naming the files of `split` that fail to decode.

    Call it while handling the error that the input pipeline of `split` raised. It
    decodes the split's files with `find_undecodable_images`, which can take minutes
    on a large split. When no file fails, or the split is held in memory, it re-raises
    `error` unchanged, because the failure then has another cause.

    Args:
        split: the `Split` whose input pipeline failed.
        error: the `tf.errors.OpError` from the pipeline, usually `InvalidArgumentError`.
        split_name: "train" or "test", for the message; None leaves it out.
        limit: maximum number of failing files to look for and name; None looks for all.

    Raises:
        BadImageError: one or more files fail to decode; it names up to `limit` of
            them, with TensorFlow's message for each, and is chained to `error`.
    """
    if split.paths is None:
        raise error

    of_split = f" of the {split_name} split" if split_name else ""
    logging.error(
        "The input pipeline failed: %s. Decoding the %d image files%s to find the damaged ones",
        _short_message(error), len(split), of_split,
    )
    started = time.perf_counter()
    failures = find_undecodable_images(split, limit=limit)
    logging.info("Decoded the image files%s in %.1f s: %d failed", of_split, time.perf_counter() - started, len(failures))
    if not failures:
        logging.error("Every image file%s decodes, so the input pipeline failed for another reason", of_split)
        raise error

    listing = "\n".join(f"  {path}: {problem}" for path, problem in failures.items())
    found = f"{len(failures)} image files{of_split} fail"
    if len(failures) == 1:
        found = f"1 image file{of_split} fails"
    more = ""
    if limit is not None and len(failures) >= limit:
        more = f" The search stopped after {limit} files, so more may follow."
    raise BadImageError(
        f"{found} to decode:\n{listing}\n"
        f"These files passed the checks made when the dataset was loaded, which read only the first and last "
        f"bytes of each file, so --skip_bad_images does not leave them out. Remove or replace them.{more}"
    ) from error
