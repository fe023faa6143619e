"""Download a dataset with tensorflow-datasets and export its images as plain files.

The input pipeline reads images from files, so a builder's examples are written once to
`<data_dir>/<builder name>_images/`: the encoded image bytes as stored by
tensorflow-datasets, under images/<tfds split>/, and an index.tsv with the columns
path, class_id (the dataset's 1-based class id), class_name and tfds_split. Later loads
read that folder and need no network. The builder's own files go to
`<data_dir>/tensorflow_datasets/` and can be deleted after the export.
"""

import csv
import os
import shutil
import tempfile

from absl import logging

from hdml_tf.data import files

INDEX_FILE = "index.tsv"
INDEX_COLUMNS = ("path", "class_id", "class_name", "tfds_split")
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "gif": ".gif"}


def export_folder(data_dir, builder_name):
    """Return the folder that `download_and_export` writes for `builder_name`."""
    return os.path.join(data_dir, f"{builder_name}_images")


def _tfds_examples(builder_name, tfds_data_dir):
    """Download and prepare a builder; yield (info, tfds split, example) with encoded images."""
    import tensorflow_datasets as tfds  # Imported lazily: it is slow to import.

    builder = tfds.builder(builder_name, data_dir=tfds_data_dir)
    try:
        builder.download_and_prepare()
    except ImportError as error:
        raise ImportError(
            f"tensorflow-datasets' {builder_name} builder needs a package that is not installed: {error}"
        ) from error

    # Keep every image encoded: the export writes the stored bytes unchanged.
    decoders = {
        name: tfds.decode.SkipDecoding()
        for name, feature in builder.info.features.items()
        if isinstance(feature, tfds.features.Image)
    }
    for split in sorted(builder.info.splits):
        dataset = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        for example in tfds.as_numpy(dataset):
            yield builder.info, split, example


def download_and_export(builder_name, data_dir, describe_example, image_feature="image"):
    """Fetch `builder_name` with tensorflow-datasets and write its images and index.tsv.

    Args:
        builder_name: tensorflow-datasets builder, e.g. "caltech_birds2011".
        data_dir: folder that receives `<builder_name>_images/` and `tensorflow_datasets/`.
        describe_example: function (info, example) -> (class id, class name), where the
            class id is the dataset's official 1-based id.
        image_feature: key of the encoded image in an example.

    Returns:
        The export folder.
    """
    target = export_folder(data_dir, builder_name)
    temporary = tempfile.mkdtemp(prefix=f".{builder_name}_images-", dir=data_dir)
    logging.info("Downloading %s with tensorflow-datasets into %s", builder_name, data_dir)
    try:
        rows = []
        counters = {}
        for info, split, example in _tfds_examples(builder_name, os.path.join(data_dir, "tensorflow_datasets")):
            data = bytes(example[image_feature])
            class_id, class_name = describe_example(info, example)
            index = counters.get(split, 0)
            counters[split] = index + 1
            extension = EXTENSIONS.get(files.sniff_image_format(data[:16]), ".img")
            relative_path = f"images/{split}/{index:06d}{extension}"
            os.makedirs(os.path.join(temporary, "images", split), exist_ok=True)
            with open(os.path.join(temporary, relative_path), "wb") as stream:
                stream.write(data)
            rows.append((relative_path, int(class_id), str(class_name), split))

        with open(os.path.join(temporary, INDEX_FILE), "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, delimiter="\t")
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(rows)
        os.chmod(temporary, 0o755)  # mkdtemp creates the folder readable by its owner only.
        os.rename(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    logging.info("Exported %d %s images to %s", len(rows), builder_name, target)
    return target


def read_export_index(folder):
    """Read index.tsv of an export folder into a list of (path, class id, class name, tfds split)."""
    index_path = os.path.join(folder, INDEX_FILE)
    rows = []
    with open(index_path, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream, delimiter="\t")
        header = next(reader, None)
        if tuple(header or ()) != INDEX_COLUMNS:
            raise ValueError(f"{index_path} has header {header}, expected {list(INDEX_COLUMNS)}")
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(INDEX_COLUMNS):
                raise ValueError(f"{index_path}, line {line_number}: expected 4 tab-separated fields, found {row}")
            rows.append((row[0], int(row[1]), row[2], row[3]))
    return rows


def read_export(folder):
    """Read an export folder into (ImageList of all images, {class id: name}, tfds split of each image)."""
    rows = read_export_index(folder)
    images = files.ImageList(
        root=folder,
        relative_paths=[row[0] for row in rows],
        class_ids=[row[1] for row in rows],
        list_file=os.path.join(folder, INDEX_FILE),
    )
    return images, {row[1]: row[2] for row in rows}, [row[3] for row in rows]
