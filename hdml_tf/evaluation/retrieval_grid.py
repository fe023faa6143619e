"""PNG grid of retrieval results: each query followed by its nearest gallery images."""

import os

import numpy as np

CORRECT_COLOUR = "#1a9641"  # green frame: same class as the query
WRONG_COLOUR = "#d7191c"  # red frame: different class
QUERY_COLOUR = "#404040"  # grey frame around the query image


def _check_images(images, name: str) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must have shape [n, H, W, 3] or [n, H, W, 1], got {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be uint8 or float 0-255, got dtype {array.dtype}")
    return array


def _to_display(image: np.ndarray) -> np.ndarray:
    """Convert one [H, W, C] image with values 0-255 to uint8 [H, W, 3]."""
    pixels = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels


def _show(axes, image: np.ndarray, caption: str, frame_colour: str) -> None:
    axes.imshow(_to_display(image), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(caption, fontsize=8, pad=3)
    for spine in axes.spines.values():
        spine.set_edgecolor(frame_colour)
        spine.set_linewidth(4)


def draw_retrieval_grid(
    query_images: np.ndarray,
    query_labels: np.ndarray,
    gallery_images: np.ndarray,
    gallery_labels: np.ndarray,
    neighbour_indices: np.ndarray,
    path: str | os.PathLike,
    k: int = 5,
    *,
    title: str | None = None,
    cell_inches: float = 1.6,
    dpi: int = 100,
) -> None:
    """Write a PNG with one row per query: the query image, then its top-k results.

    Each result is framed green when its label equals the query's label and red
    otherwise; captions show the labels. Rendering uses matplotlib's Agg canvas
    directly, so the global matplotlib backend is left untouched.

    For the usual protocol (queries and gallery are the same set), pass the same
    images and labels twice and `neighbour_indices` from `embeddings_to_neighbours`,
    which already excludes each query itself.

    Args:
        query_images: [n_queries, H, W, 3] or [n_queries, H, W, 1], uint8 or float 0-255.
        query_labels: int array [n_queries].
        gallery_images: [n_gallery, H', W', 3] or [n_gallery, H', W', 1], same value range.
        gallery_labels: int array [n_gallery].
        neighbour_indices: int array [n_queries, >= k]; row i lists gallery indices
            nearest first.
        path: output PNG file; parent directories are created.
        k: results shown per query.
        title: figure title; a default names k and the colour code.
        cell_inches: width of one image cell in inches; rows are 1.2 times as high
            to leave room for the captions.
        dpi: output resolution.
    """
    queries = _check_images(query_images, "query_images")
    gallery = _check_images(gallery_images, "gallery_images")
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    neighbours = np.asarray(neighbour_indices)

    if query_labels.shape != (queries.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({queries.shape[0]},), got {query_labels.shape}"
        )
    if gallery_labels.shape != (gallery.shape[0],):
        raise ValueError(
            f"gallery_labels must have shape ({gallery.shape[0]},), got {gallery_labels.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if (
        neighbours.ndim != 2
        or neighbours.shape[0] != queries.shape[0]
        or neighbours.shape[1] < k
    ):
        raise ValueError(
            f"neighbour_indices must have shape [{queries.shape[0]}, >= k = {k}], "
            f"got {neighbours.shape}"
        )
    if not np.issubdtype(neighbours.dtype, np.integer):
        raise ValueError(
            f"neighbour_indices must be an integer array, got dtype {neighbours.dtype}"
        )
    top_k = neighbours[:, :k]
    if top_k.size and (top_k.min() < 0 or top_k.max() >= gallery.shape[0]):
        raise ValueError(
            f"neighbour_indices must index gallery_images (0 to {gallery.shape[0] - 1}), "
            f"got values from {top_k.min()} to {top_k.max()}"
        )
    if queries.shape[0] == 0:
        raise ValueError("query_images must contain at least one query")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    num_rows, num_columns = queries.shape[0], k + 1
    figure = Figure(
        figsize=(cell_inches * num_columns, 1.2 * cell_inches * num_rows + 0.9), dpi=dpi
    )
    FigureCanvasAgg(figure)
    grid = figure.subplots(num_rows, num_columns, squeeze=False)

    for row in range(num_rows):
        _show(grid[row, 0], queries[row], f"query {query_labels[row]}", QUERY_COLOUR)
        for rank in range(k):
            index = int(top_k[row, rank])
            correct = gallery_labels[index] == query_labels[row]
            _show(
                grid[row, rank + 1],
                gallery[index],
                f"#{rank + 1}: {gallery_labels[index]}",
                CORRECT_COLOUR if correct else WRONG_COLOUR,
            )

    figure.suptitle(
        title or f"Query (left) and its {k} nearest neighbours; captions show labels",
        fontsize=10,
    )
    figure.legend(
        handles=[
            Patch(facecolor="none", edgecolor=CORRECT_COLOUR, linewidth=3, label="same class"),
            Patch(facecolor="none", edgecolor=WRONG_COLOUR, linewidth=3, label="other class"),
        ],
        loc="lower center",
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))

    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png")
