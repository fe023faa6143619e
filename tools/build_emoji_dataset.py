"""Build a class-disjoint image-folder dataset of emoji drawn by two vendors.

Reads the installed npm packages `emoji-datasource-google` (Noto Emoji) and
`emoji-datasource-twitter` (Twemoji); it downloads nothing. Install them first:

    npm install --prefix /tmp/emoji emoji-datasource-google emoji-datasource-twitter
    python tools/build_emoji_dataset.py --npm_dir=/tmp/emoji --output=/tmp/emoji_data

One class is one emoji, named by the `unified` code points of its `emoji.json` entry
(for example `1F385`), and each vendor contributes its 64 px drawing, found under
`node_modules/<package>/img/<vendor>/64/` by the entry's `image` field. Entries whose
image file is missing for a vendor lose that vendor, and classes left with fewer than two
images are dropped. Skin-tone variations (`skin_variations`) are not classes of their own:
they repeat the base drawing with another skin colour, so as separate classes they would
be near-duplicates whose neighbours count as misses in retrieval.

The PNG files are RGBA. They are composited onto a white background and written as RGB,
because the training pipeline decodes three channels and would otherwise see whatever
colour the transparent pixels happen to store.

Output: OUTPUT/train/<class>/<vendor>.png for the first half of the sorted classes,
OUTPUT/test/<class>/<vendor>.png for the second half, and OUTPUT/ATTRIBUTION.md.
"""

import json
import os
import shutil
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("npm_dir", None, "Folder passed to `npm install --prefix`, containing node_modules/.")
flags.DEFINE_string("output", None, "Folder to write train/, test/ and ATTRIBUTION.md to; must be empty or absent.")
flags.DEFINE_bool("overwrite", False, "Delete train/ and test/ in --output before writing.")

# npm package name, image folder name under img/, credit line for ATTRIBUTION.md.
VENDORS = (
    (
        "emoji-datasource-google",
        "google",
        "Google Noto Emoji (https://github.com/googlefonts/noto-emoji), available under the Apache License 2.0 "
        "as the emoji-datasource-google README states (it links "
        "https://github.com/googlei18n/noto-emoji/blob/master/LICENSE).",
    ),
    (
        "emoji-datasource-twitter",
        "twitter",
        "Twemoji (https://github.com/jdecked/twemoji), available under the Creative Commons Attribution 4.0 "
        "licence (CC-BY-4.0) as the emoji-datasource-twitter README states (it links "
        "https://github.com/jdecked/twemoji/blob/v15.0.2/LICENSE-GRAPHICS).",
    ),
)
IMAGE_SIZE_FOLDER = "64"
SPLITS = ("train", "test")


class EmojiPackageError(FileNotFoundError):
    """Raised when an npm package, its emoji.json or its image folder is missing."""


def package_dir(npm_dir, package):
    return os.path.join(npm_dir, "node_modules", package)


def read_package(npm_dir, package, vendor):
    """Return ({unified: image path} for the files that exist, number of missing files, package version)."""
    root = package_dir(npm_dir, package)
    index_path = os.path.join(root, "emoji.json")
    image_folder = os.path.join(root, "img", vendor, IMAGE_SIZE_FOLDER)
    if not os.path.isfile(index_path):
        raise EmojiPackageError(
            f"{index_path} not found: install the package with `npm install --prefix {npm_dir} {package}`"
        )
    if not os.path.isdir(image_folder):
        raise EmojiPackageError(f"{image_folder} not found: the package {package} has no {IMAGE_SIZE_FOLDER} px images")
    with open(index_path, encoding="utf-8") as stream:
        entries = json.load(stream)
    version = "unknown"
    manifest = os.path.join(root, "package.json")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as stream:
            version = json.load(stream).get("version", "unknown")

    images = {}
    missing = 0
    for entry in entries:
        path = os.path.join(image_folder, entry["image"])
        if os.path.isfile(path):
            images[entry["unified"]] = path
        else:
            missing += 1
    return images, missing, version


def collect_classes(npm_dir, vendors=VENDORS):
    """Return ({class name: {vendor: image path}} for classes with two or more images, versions, missing counts)."""
    by_class = {}
    versions = {}
    missing = {}
    for package, vendor, _ in vendors:
        images, missing[vendor], versions[package] = read_package(npm_dir, package, vendor)
        for unified, path in images.items():
            by_class.setdefault(unified, {})[vendor] = path
    classes = {name: images for name, images in by_class.items() if len(images) >= 2}
    return classes, versions, missing


def split_classes(class_names):
    """Return (train, test): the first half of the sorted names, and the rest."""
    names = sorted(class_names)
    half = len(names) // 2
    return names[:half], names[half:]


def write_rgb_on_white(source, destination):
    """Composite an RGBA PNG onto white and write it as an RGB PNG."""
    import tensorflow as tf  # Imported here so that --help does not wait for TensorFlow.

    image = tf.cast(tf.io.decode_png(tf.io.read_file(source), channels=4), tf.float32)
    alpha = image[..., 3:] / 255.0
    rgb = image[..., :3] * alpha + 255.0 * (1.0 - alpha)
    encoded = tf.io.encode_png(tf.cast(tf.round(rgb), tf.uint8))
    tf.io.write_file(destination, encoded)


def attribution_text(versions, vendors=VENDORS):
    lines = [
        "# Attribution",
        "",
        "The images in train/ and test/ come from these npm packages. The packages' data and code are",
        "MIT-licensed (Copyright (c) 2013 Cal Henderson, the packages' LICENSE file); the images keep the",
        "licences that each package's README states for them:",
        "",
    ]
    for package, _, _ in vendors:
        lines.append(f"- {package} {versions.get(package, 'unknown')}")
    lines += ["", "Image credits:", ""]
    for _, vendor, credit in vendors:
        lines.append(f"- `{vendor}.png`: {credit}")
    lines += [
        "",
        "Changes made: each 64 px RGBA image was composited onto a white background and saved as RGB PNG.",
        "",
    ]
    return "\n".join(lines)


def build(npm_dir, output, overwrite=False, vendors=VENDORS):
    """Write the dataset to `output` and return {"train": classes, "test": classes, "missing": {vendor: n}}."""
    classes, versions, missing = collect_classes(npm_dir, vendors)
    if len(classes) < 2:
        raise EmojiPackageError(f"found {len(classes)} emoji with two or more vendor images in {npm_dir}: need at least 2")
    for split in SPLITS:
        folder = os.path.join(output, split)
        if os.path.exists(folder):
            if not overwrite:
                raise FileExistsError(f"{folder} already exists: pass --overwrite or choose an empty --output")
            shutil.rmtree(folder)

    train, test = split_classes(classes)
    for split, names in zip(SPLITS, (train, test)):
        for name in names:
            class_folder = os.path.join(output, split, name)
            os.makedirs(class_folder)
            for vendor, source in sorted(classes[name].items()):
                write_rgb_on_white(source, os.path.join(class_folder, f"{vendor}.png"))
    with open(os.path.join(output, "ATTRIBUTION.md"), "w", encoding="utf-8") as stream:
        stream.write(attribution_text(versions, vendors))
    return {"train": len(train), "test": len(test), "missing": missing}


def main(argv):
    del argv
    if not FLAGS.npm_dir or not FLAGS.output:
        print("build_emoji_dataset: error: --npm_dir and --output are required", file=sys.stderr)
        sys.exit(2)
    try:
        summary = build(FLAGS.npm_dir, FLAGS.output, overwrite=FLAGS.overwrite)
    except (EmojiPackageError, FileExistsError) as error:
        print(f"build_emoji_dataset: error: {error}", file=sys.stderr)
        sys.exit(2)
    logging.info(
        "Wrote %d training and %d test classes to %s (image files missing per vendor: %s)",
        summary["train"], summary["test"], FLAGS.output, summary["missing"],
    )


if __name__ == "__main__":
    app.run(main)
