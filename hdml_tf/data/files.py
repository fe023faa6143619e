"""Image files on disk: safe paths, archive extraction, cheap image checks and path splits.

Image checks run when a dataset is loaded and read only each file's first bytes and
its last `TAIL_WINDOW_BYTES`, so that loading Stanford Online Products (120,053 files)
stays fast. They find missing, empty, non-image and truncated files:

- JPEG: starts with the SOI marker FF D8 and contains the EOI marker FF D9 in its tail.
  A JPEG without EOI in the tail gets a full structural walk (marker segments, then the
  entropy-coded data up to the next marker), which accepts data appended after EOI.
- PNG: starts with the PNG signature and ends with an IEND chunk (searched in the tail,
  else found by walking the chunk headers).
- BMP: starts with "BM" and is at least as long as the file size in its header.
- GIF: starts with GIF87a or GIF89a and ends with the trailer byte 0x3B.

A file that passes these checks can still hold damaged compressed data. It is decoded
only by `tf.io.decode_image` in the input pipeline, which then either returns an image
with damaged regions or fails with `InvalidArgumentError` naming the op.
"""

import concurrent.futures
import dataclasses
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib

import numpy as np
from absl import logging

from hdml_tf.data.errors import DatasetNotFoundError
from hdml_tf.data.splits import DatasetSplits, Split, relabel

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TAIL_WINDOW_BYTES = 1024
# Image checks wait on the disk, not the CPU, so they use more threads than cores.
CHECK_THREADS = 16
# Bad files named one by one in an error or log message; the rest are counted.
MAX_LISTED_BAD_FILES = 10

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In JPEG entropy-coded data, FF is followed by 00 (a stuffed byte), D0-D7 (a restart
# marker) or FF (fill). Any other byte after FF starts the next marker segment.
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class BadImageError(ValueError):
    """Raised when an image listed by a dataset is missing, unreadable or outside its folder."""


class DatasetCountError(ValueError):
    """Raised when a split's image or class count differs from the official release."""


class UnsafeArchiveError(ValueError):
    """Raised when an archive member would be written outside the extraction folder."""


# === Paths ===


def unsafe_path_reason(relative_path):
    """Return why `relative_path` could leave its root folder, or None when it is safe.

    Absolute paths, `..` components (with either slash), empty paths and NUL bytes are unsafe.
    """
    if not relative_path:
        return "empty path"
    if "\x00" in relative_path:
        return "path contains a NUL byte"
    if os.path.isabs(relative_path) or relative_path.startswith(("/", "\\")):
        return "absolute path"
    if ".." in re.split(r"[\\/]", relative_path):
        return "path contains '..'"
    return None


def safe_join(root, relative_path):
    """Join `relative_path` to `root`, raising BadImageError if the result could leave `root`."""
    reason = unsafe_path_reason(relative_path)
    if reason is not None:
        raise BadImageError(f"invalid entry {relative_path!r} under {root}: {reason}")
    return os.path.join(root, relative_path)


def _is_inside(path, real_root):
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


# === Image checks ===


def sniff_image_format(head):
    """Return "jpeg", "png", "bmp" or "gif" from a file's first bytes, or None."""
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def jpeg_has_end_marker(data):
    """Return whether JPEG bytes reach an EOI marker by walking their marker segments."""
    position = 2
    size = len(data)
    while position + 1 < size:
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        if position + 4 > size:
            return False
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return False
        position += 2 + length

        # A start-of-scan segment is followed by entropy-coded data up to the next marker.
        if marker == 0xDA:
            match = _JPEG_MARKER_AFTER_SCAN.search(data, position)
            if match is None:
                return False
            position = match.start()
    return False


def _png_has_end_chunk(stream, size):
    position = len(_PNG_SIGNATURE)
    while position + 8 <= size:
        stream.seek(position)
        header = stream.read(8)
        length = int.from_bytes(header[:4], "big")
        if header[4:8] == b"IEND":
            return position + 12 <= size
        position += 12 + length
    return False


def check_image_file(path, real_root):
    """Return why the image file at `path` is unusable, or None when it passes the cheap checks.

    `real_root` is the dataset folder after `os.path.realpath`. A path that resolves
    outside it, for example through a symbolic link, is reported and never opened.
    """
    real_path = os.path.realpath(path)
    if not _is_inside(real_path, real_root):
        return f"resolves to {real_path}, outside the dataset folder {real_root}"
    try:
        size = os.stat(real_path).st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if not os.path.isfile(real_path):
        return "not a regular file"
    if size == 0:
        return "empty file"

    try:
        with open(real_path, "rb") as stream:
            head = stream.read(16)
            stream.seek(max(0, size - TAIL_WINDOW_BYTES))
            tail = stream.read()
            image_format = sniff_image_format(head)

            if image_format is None:
                return f"not a JPEG, PNG, BMP or GIF image (starts with {head[:8].hex(' ')})"
            if image_format == "jpeg":
                if b"\xff\xd9" in tail:
                    return None
                stream.seek(0)
                if not jpeg_has_end_marker(stream.read()):
                    return "truncated JPEG: no end-of-image marker (FF D9)"
            elif image_format == "png":
                if b"IEND" not in tail and not _png_has_end_chunk(stream, size):
                    return "truncated PNG: no IEND chunk"
            elif image_format == "bmp":
                declared = int.from_bytes(head[2:6], "little")
                if len(head) < 14 or size < declared:
                    return f"truncated BMP: header declares {declared} bytes, file has {size}"
            elif not tail.endswith(b"\x3b"):
                return "truncated GIF: no trailer byte 0x3B at the end"
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    return None


def find_bad_images(paths, root):
    """Check `paths` in a thread pool; return {index: reason} for the ones that fail."""
    real_root = os.path.realpath(root)
    with concurrent.futures.ThreadPoolExecutor(max_workers=CHECK_THREADS) as executor:
        reasons = executor.map(lambda path: check_image_file(path, real_root), paths)
        return {index: reason for index, reason in enumerate(reasons) if reason is not None}


# === Archives ===


def _archive_member_problem(name, is_file_or_dir=True):
    if not is_file_or_dir:
        return "is a link or special file"
    parts = [part for part in re.split(r"[\\/]", name) if part not in ("", ".")]
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return "has an absolute path"
    if ".." in parts:
        return "contains '..'"
    if not parts:
        return "has an empty name"
    return None


def _check_members(archive_path, members):
    for name, is_file_or_dir in members:
        problem = _archive_member_problem(name, is_file_or_dir)
        if problem is not None:
            raise UnsafeArchiveError(
                f"archive {archive_path} is unsafe to extract: member {name!r} {problem}; "
                f"nothing was extracted. Replace it with the official archive."
            )


def _extract_checked_members(archive_path, destination):
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            _check_members(archive_path, [(info.filename, True) for info in archive.infolist()])
            archive.extractall(destination)
        return
    with tarfile.open(archive_path, "r:*") as archive:
        members = archive.getmembers()
        _check_members(archive_path, [(member.name, member.isfile() or member.isdir()) for member in members])
        # The "data" filter (Python 3.11.4 and later) repeats these checks and drops
        # set-user-id and other unsafe permission bits.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(destination, members=members, **extra)


def extract_archive(archive_path, destination):
    """Extract a .tar, .tgz, .tar.gz or .zip archive into `destination`.

    Every member is checked before anything is written: an absolute name, a `..`
    component, or (in a tar file) a link, device or FIFO raises UnsafeArchiveError.
    The archive is extracted into a hidden temporary folder inside `destination`, and its
    top-level entries are then renamed into place, so an interrupted extraction never
    leaves a partial dataset folder under its final name. Top-level entries that already
    exist in `destination` are kept as they are.

    Raises:
        UnsafeArchiveError: a member is unsafe; nothing is extracted.
        ValueError: the archive is damaged or truncated.
    """
    started = time.perf_counter()
    logging.info("Extracting %s into %s", archive_path, destination)
    temporary = tempfile.mkdtemp(prefix=".extracting-", dir=destination)
    try:
        try:
            _extract_checked_members(archive_path, temporary)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise ValueError(
                f"failed to extract {archive_path}: {error}. The archive is damaged or incomplete: download it again"
            ) from error

        for name in sorted(os.listdir(temporary)):
            target = os.path.join(destination, name)
            if os.path.lexists(target):
                logging.warning("Kept the existing %s instead of the copy in %s", target, archive_path)
                continue
            os.rename(os.path.join(temporary, name), target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    logging.info("Extracted %s in %.1f s", archive_path, time.perf_counter() - started)


@dataclasses.dataclass
class Source:
    """A file that a dataset needs in `data_dir`, as a plain file or inside an archive.

    Attributes:
        path: path relative to `data_dir` that exists once the source is in place, e.g.
            "CUB_200_2011/images.txt".
        archive: name of the official archive in `data_dir` that contains `path`, if any.
    """

    path: str
    archive: str = None

    @property
    def top_level(self):
        return self.path.split("/")[0]

    def is_available(self, data_dir):
        return os.path.exists(os.path.join(data_dir, self.path)) or (
            self.archive is not None and os.path.isfile(os.path.join(data_dir, self.archive))
        )

    def describe(self):
        if self.archive is None:
            return self.path
        return f"{self.archive} (or the {self.top_level}/ folder extracted from it)"


def missing_sources(data_dir, sources):
    """Return the sources found in `data_dir` neither extracted nor as their archive."""
    return [source for source in sources if not source.is_available(data_dir)]


def prepare_sources(data_dir, sources):
    """Extract the archive of every source whose path is not in `data_dir` yet.

    Call it only after `missing_sources` returned nothing.
    """
    for source in sources:
        if os.path.exists(os.path.join(data_dir, source.path)):
            continue
        existed = os.path.lexists(os.path.join(data_dir, source.top_level))
        extract_archive(os.path.join(data_dir, source.archive), data_dir)
        if os.path.exists(os.path.join(data_dir, source.path)):
            continue
        if existed:
            raise DatasetNotFoundError(
                f"{source.path} not found in {data_dir}: the existing {source.top_level} there is incomplete, "
                f"so delete it and {source.archive} will be extracted again"
            )
        raise DatasetNotFoundError(
            f"{source.archive} in {data_dir} does not contain {source.path}: replace it with the official archive"
        )


def read_table(path, num_fields):
    """Read a text file of whitespace-separated fields into a list of (line number, fields).

    Blank lines are skipped; the last field takes the rest of its line.

    Raises:
        ValueError: a line has fewer than `num_fields` fields; the message names the line.
    """
    rows = []
    with open(path, encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(maxsplit=num_fields - 1)
            if len(fields) != num_fields:
                raise ValueError(f"{path}, line {line_number}: expected {num_fields} fields, found {line.strip()!r}")
            rows.append((line_number, fields))
    return rows


# === Splits of image files ===


@dataclasses.dataclass
class ImageList:
    """Images of one split as named by a dataset's annotation file, before any check.

    Attributes:
        root: folder the relative paths start from.
        relative_paths: path of every image, as written in `list_file`.
        class_ids: the dataset's own class id of every image.
        list_file: annotation file the entries come from, for error messages.
    """

    root: str
    relative_paths: list
    class_ids: list
    list_file: str


@dataclasses.dataclass(frozen=True)
class ExpectedCounts:
    """Image and class count of a split in the official release."""

    images: int
    classes: int


def _describe_bad_files(bad):
    lines = [f"  {path}: {reason}" for path, reason in bad[:MAX_LISTED_BAD_FILES]]
    if len(bad) > MAX_LISTED_BAD_FILES:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_BAD_FILES} more")
    return "\n".join(lines)


OFFICIAL_BAD_IMAGE_ADVICE = "Replace these files with the ones from the official archive"


def make_path_split(
    dataset, split_name, images, class_names, skip_bad_images=False, bad_image_advice=OFFICIAL_BAD_IMAGE_ADVICE
):
    """Check the files of `images` and build a Split with 0-based contiguous labels.

    Labels follow the sorted order of the class ids that still have images after bad
    files are skipped.

    Args:
        dataset: dataset name for messages, e.g. "CUB-200-2011".
        split_name: "train" or "test", for messages.
        images: the split's `ImageList`.
        class_names: {class id: class name} for every class id in `images`.
        skip_bad_images: skip bad entries (counted and listed in the log) instead of raising.
        bad_image_advice: fix for the bad files in the BadImageError message, as the
            start of a sentence that continues with ", or pass --skip_bad_images".

    Raises:
        BadImageError: an entry is unsafe, or its file is missing or fails the cheap image
            checks, and `skip_bad_images` is not set. The message lists the bad files.
    """
    unknown = sorted(set(images.class_ids) - set(class_names))
    if unknown:
        raise ValueError(f"class ids {unknown[:5]} in {images.list_file} have no class name")

    started = time.perf_counter()
    bad = []
    safe_indices = []
    for index, relative_path in enumerate(images.relative_paths):
        reason = unsafe_path_reason(relative_path)
        if reason is None:
            safe_indices.append(index)
        else:
            bad.append((index, f"{relative_path!r} in {images.list_file}", f"{reason}, not opened"))

    paths = [os.path.join(images.root, images.relative_paths[index]) for index in safe_indices]
    for position, reason in find_bad_images(paths, images.root).items():
        bad.append((safe_indices[position], paths[position], reason))
    bad.sort()
    logging.info(
        "Checked the %d files of the %s %s split in %.1f s",
        len(paths), dataset, split_name, time.perf_counter() - started,
    )

    if bad:
        listing = _describe_bad_files([(name, reason) for _, name, reason in bad])
        if not skip_bad_images:
            raise BadImageError(
                f"{len(bad)} of the {len(images.relative_paths)} images of the {dataset} {split_name} split "
                f"(from {images.list_file}) are unusable:\n{listing}\n"
                f"{bad_image_advice}, or pass --skip_bad_images to leave them out."
            )
        logging.warning(
            "Skipped %d of the %d images of the %s %s split:\n%s",
            len(bad), len(images.relative_paths), dataset, split_name, listing,
        )

    bad_indices = {index for index, _, _ in bad}
    kept = [index for index in range(len(images.relative_paths)) if index not in bad_indices]
    class_ids = np.array([images.class_ids[index] for index in kept], dtype=np.int64)
    present_ids = sorted(set(class_ids.tolist()))
    return Split(
        paths=np.array([os.path.join(images.root, images.relative_paths[index]) for index in kept], dtype=object),
        labels=relabel(class_ids, present_ids),
        class_names=[class_names[class_id] for class_id in present_ids],
    )


def check_counts(dataset, split_name, split, expected, allow_partial_dataset=False):
    """Compare a split's image and class counts with the official ones.

    Raises:
        DatasetCountError: the counts differ and `allow_partial_dataset` is not set; with
            it set, the difference is logged as a warning.
    """
    if len(split) == expected.images and split.num_classes == expected.classes:
        return
    message = (
        f"the {dataset} {split_name} split has {len(split):,} images in {split.num_classes:,} classes, "
        f"but the official one has {expected.images:,} images in {expected.classes:,} classes"
    )
    if not allow_partial_dataset:
        raise DatasetCountError(
            f"{message}. Check that the files are complete and unmodified, or pass "
            f"--allow_partial_dataset to use this subset."
        )
    logging.warning("%s; continuing because allow_partial_dataset is set", message)


def listed_path(prefix, listed):
    """Return `prefix`/`listed` for a safe entry; an unsafe one is returned unchanged.

    Returning an unsafe entry as it is lets `make_path_split` report and skip it, where
    joining it to `prefix` could hide an absolute path.
    """
    if unsafe_path_reason(listed) is not None:
        return listed
    return f"{prefix}/{listed}"


def partition_by_class(images, is_train_class):
    """Split one `ImageList` into the train and test lists by `is_train_class(class id)`."""
    lists = ([], []), ([], [])
    for relative_path, class_id in zip(images.relative_paths, images.class_ids):
        paths, ids = lists[0] if is_train_class(class_id) else lists[1]
        paths.append(relative_path)
        ids.append(class_id)
    return tuple(ImageList(images.root, paths, ids, images.list_file) for paths, ids in lists)


def make_dataset_splits(
    name,
    dataset,
    train,
    test,
    class_names,
    expected,
    source,
    skip_bad_images=False,
    allow_partial_dataset=False,
    bad_image_advice=OFFICIAL_BAD_IMAGE_ADVICE,
):
    """Build, check and log a dataset's train and test splits from their image lists.

    Args:
        name: registry name of the dataset, e.g. "cub".
        dataset: display name, e.g. "CUB-200-2011".
        train: `ImageList` of the training split.
        test: `ImageList` of the test split.
        class_names: {class id: name} for every class id in both lists.
        expected: {"train": ExpectedCounts, "test": ExpectedCounts} of the official
            release, or None to skip the count check.
        source: where the files were read from, for the log.
        skip_bad_images: see `make_path_split`.
        allow_partial_dataset: see `check_counts`.
        bad_image_advice: see `make_path_split`.
    """
    splits = DatasetSplits(
        name=name,
        train=make_path_split(dataset, "train", train, class_names, skip_bad_images, bad_image_advice),
        test=make_path_split(dataset, "test", test, class_names, skip_bad_images, bad_image_advice),
    )
    log_split_sizes(dataset, splits, source)
    for split_name, split in (("train", splits.train), ("test", splits.test)):
        if not len(split):
            raise DatasetNotFoundError(f"the {dataset} {split_name} split in {source} has no usable images")
    if expected is not None:
        check_counts(dataset, "train", splits.train, expected["train"], allow_partial_dataset)
        check_counts(dataset, "test", splits.test, expected["test"], allow_partial_dataset)
    return splits


def log_split_sizes(dataset, splits, source):
    """Log the image and class counts of both splits and where they were read from."""
    logging.info(
        "%s from %s: train split %d images in %d classes, test split %d images in %d classes",
        dataset, source, len(splits.train), splits.train.num_classes, len(splits.test), splits.test.num_classes,
    )


def require_data_dir(data_dir, dataset, instructions):
    """Raise DatasetNotFoundError when no `data_dir` was given or it is not a folder."""
    if data_dir is None:
        raise DatasetNotFoundError(f"{dataset} needs --data_dir: {instructions}")
    if not os.path.isdir(data_dir):
        raise DatasetNotFoundError(f"--data_dir={data_dir} is not a folder: {instructions}")
