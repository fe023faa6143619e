"""Exact k-nearest-neighbour search over L2-normalised embeddings.

Every sample is a query against all other samples of the same set (the usual
deep-metric-learning test protocol). The query itself is excluded by index, so
duplicate embeddings of other samples still count as neighbours.

Order of neighbours
-------------------
Neighbours are sorted by squared Euclidean distance between unit vectors, and ties
go to the smaller index. To make "tie" well defined for both backends, close
candidates are compared with exact integer keys of the float64 unit vectors
(`hdml_tf.evaluation.exact_keys`), accurate to about 1e-13 for D = 512. So the
order is the float64 Euclidean order, and it does not depend on the backend, the
chunk size or the BLAS library.

Exact ties, broken by index, are therefore: duplicate embeddings, distances from
an all-zero row, and ties whose coordinates are the same up to order and sign
(one-hot vectors, for example). A real-number tie between vectors with different
coordinates can be split by the rounding of the unit vectors, as in float64.

Search, per chunk of queries
----------------------------
1. The backend returns the m candidates with the smallest float32 distances:
   faiss `IndexFlatL2`, or a TensorFlow matmul followed by `tf.math.top_k`.
   m = k + 1 + max(16, (k + 1) // 32), because the query itself is among them.
2. Candidates arrive sorted by float32 distance. Neighbouring candidates whose
   float32 distances differ by at most 2 * tol form a group whose internal order
   float32 cannot decide. tol bounds |float32 distance - exact distance|.
3. Within each group the exact key decides, then the index.
4. If the group at slot k + 1 reaches the last candidate, samples outside the
   candidate list may belong among the k nearest, so those queries are searched
   again with 2 * m candidates (up to all N samples).

Memory is O(chunk * N) for the TensorFlow distance block and O(chunk * m) for
candidates. No N x N matrix is formed.
"""

import math
from collections.abc import Iterator

import numpy as np
from absl import logging

from hdml_tf.evaluation import _backend
from hdml_tf.evaluation.exact_keys import ExactDistanceKeys

# Largest embedding dimension. The exact keys stay exact well beyond it, with
# 16 low bits at this size.
MAX_DIM = 2**20
# Default byte budget of the TensorFlow float32 distance block [chunk, N].
DEFAULT_CHUNK_BYTES = 256 * 2**20
# Default number of candidate entries (chunk * m) per faiss chunk, so that each
# float64 or int64 array [chunk, m] takes 16 MiB and the allocator can reuse it for
# the next chunk. On 60,502 x 512 embeddings, faiss searched as fast per query with
# 1024 as with 8192 queries per call (faiss-cpu 1.15.1, 2 cores).
_FAISS_CHUNK_CANDIDATES = 2**21
# Rows of a chunk whose candidates also calibrate tol (every 8th).
_PROBE_ROW_STEP = 8
# Rows normalised at once when the search is set up (16 MiB of float64 for D = 512).
_NORMALIZE_BLOCK_ROWS = 4096
# Candidate list length m = k + 1 + max(_MIN_EXTRA_CANDIDATES, (k + 1) // 32).
_MIN_EXTRA_CANDIDATES = 16
# Number of (query, candidate) pairs whose exact key is computed at once; it keeps
# the gathered float64 rows at 8 MiB for D = 512.
_EXACT_BLOCK_PAIRS = 2048


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Scale each row to unit Euclidean norm, in float64.

    x_i / ||x_i||_2 for rows with a nonzero norm. All-zero rows stay zero instead of
    becoming NaN, so a zero embedding sits at squared distance 1 from every unit vector.

    Args:
        embeddings: float array [N, D], finite.

    Returns:
        float64 array [N, D].
    """
    rows = np.asarray(embeddings, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
    unit = np.zeros_like(rows)
    np.divide(rows, norms, out=unit, where=norms > 0)
    return unit


def check_embeddings(embeddings) -> np.ndarray:
    """Return `embeddings` as a 2-D float array, or raise ValueError naming the problem."""
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(
            f"embeddings must be a 2-D array [N, D], got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"embeddings must be a float or integer array, got dtype {array.dtype}"
        )
    if array.shape[0] < 2:
        raise ValueError(
            f"embeddings must have at least 2 rows so that every query has a "
            f"neighbour, got shape {array.shape}"
        )
    if not 1 <= array.shape[1] <= MAX_DIM:
        raise ValueError(
            f"embeddings must have between 1 and {MAX_DIM} columns, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        bad_rows = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        raise ValueError(
            f"embeddings contain NaN or infinite values in {bad_rows.size} rows, "
            f"first rows {bad_rows[:5].tolist()}"
        )
    return array


def default_query_chunk_size(num_samples: int, num_candidates: int, backend: str) -> int:
    """Return the default number of queries searched at once.

    tensorflow: the [chunk, N] float32 distance block fits DEFAULT_CHUNK_BYTES. faiss:
    the candidate arrays [chunk, m] have _FAISS_CHUNK_CANDIDATES entries.
    """
    if backend == "tensorflow":
        chunk = DEFAULT_CHUNK_BYTES // (4 * num_samples)
    else:
        chunk = _FAISS_CHUNK_CANDIDATES // num_candidates
    return int(max(1, min(num_samples, chunk)))


def initial_candidate_count(k: int, num_samples: int) -> int:
    """Return m, the length of the first candidate list for k neighbours."""
    slots = k + 1
    return min(num_samples, slots + max(_MIN_EXTRA_CANDIDATES, slots // 32))


class _FaissSearcher:
    """Float32 candidate search with faiss `IndexFlatL2` (exact, multi-threaded)."""

    def __init__(self, gallery32: np.ndarray):
        faiss = _backend.import_faiss()
        self._index = faiss.IndexFlatL2(gallery32.shape[1])
        self._index.add(gallery32)

    def search(self, queries32: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = self._index.search(queries32, m)
        return distances, indices.astype(np.int64, copy=False)


class _TensorFlowSearcher:
    """Float32 candidate search with a TensorFlow matmul and `tf.math.top_k`."""

    def __init__(self, gallery32: np.ndarray):
        import tensorflow as tf

        self._tf = tf
        self._gallery = tf.constant(gallery32)
        self._gallery_sq = tf.reduce_sum(tf.square(self._gallery), axis=1)

    def search(self, queries32: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        tf = self._tf
        queries = tf.constant(queries32)
        queries_sq = tf.reduce_sum(tf.square(queries), axis=1)

        # [distances] ||q||^2 + ||x||^2 - 2 q.x, clamped at 0.
        inner = tf.linalg.matmul(queries, self._gallery, transpose_b=True)
        distances = queries_sq[:, None] + self._gallery_sq[None, :] - 2.0 * inner
        distances = tf.maximum(distances, 0.0)

        negated, indices = tf.math.top_k(-distances, k=m, sorted=True)
        return -negated.numpy(), indices.numpy().astype(np.int64)


class ExactNeighbourSearch:
    """Exact k-nearest-neighbour search of every sample among the other samples.

    Args:
        embeddings: float array [N, D]; rows are L2-normalised here.
        backend: "faiss", "tensorflow" or "auto" (faiss when importable).

    Attributes:
        unit_embeddings: the L2-normalised rows, float32 [N, D].
        backend: the backend in use, "faiss" or "tensorflow".

    The positions that `search` returns in exact order do not depend on the backend
    or on the chunk size. The module docstring describes the order and how it is
    made exact.
    """

    def __init__(self, embeddings: np.ndarray, backend: str = "auto"):
        array = check_embeddings(embeddings)
        self.backend = _backend.resolve_backend(backend)
        self.num_samples, self.dim = array.shape

        self.unit_embeddings = np.empty((self.num_samples, self.dim), dtype=np.float32)
        self._exact_keys = ExactDistanceKeys(self.num_samples, self.dim)
        for start in range(0, self.num_samples, _NORMALIZE_BLOCK_ROWS):
            unit = l2_normalize(array[start : start + _NORMALIZE_BLOCK_ROWS])
            self.unit_embeddings[start : start + unit.shape[0]] = unit
            self._exact_keys.set_rows(start, unit)

        # Starting bound on |float32 distance - exact distance| for unit vectors:
        # 4 * sqrt(D) float32 ulps of 1. _resolve_order raises it when it measures
        # larger errors.
        # NOTE: tol is an empirical bound (at least 4 times the largest error measured
        # on the resolved groups and on 3 candidates of every 8th query), not a proven
        # one. A pair whose float32 error exceeds it could be ordered differently by
        # the two backends.
        self._tol = 4.0 * math.sqrt(self.dim) * 2.0**-24

        if self.backend == "faiss":
            self._searcher = _FaissSearcher(self.unit_embeddings)
        else:
            self._searcher = _TensorFlowSearcher(self.unit_embeddings)

    def _exact_pair_keys(
        self, query_ids: np.ndarray, candidate_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Compute exact (major, minor) keys for pairs given as two int arrays [P]."""
        major = np.empty(query_ids.shape[0], dtype=np.int64)
        minor = np.empty(query_ids.shape[0], dtype=np.int64)
        for start in range(0, query_ids.shape[0], _EXACT_BLOCK_PAIRS):
            block = slice(start, start + _EXACT_BLOCK_PAIRS)
            major[block], minor[block] = self._exact_keys.keys(
                query_ids[block], candidate_ids[block]
            )
        return major, minor

    def _resolve_order(
        self,
        query_ids: np.ndarray,
        distances32: np.ndarray,
        indices: np.ndarray,
        slots: int,
        exact_positions: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sort candidates into the exact order and flag rows whose first `slots` are final.

        Args:
            query_ids: int64 [c], the query sample of each row.
            distances32: backend float32 squared distances [c, m].
            indices: int64 candidate indices [c, m].
            slots: number of leading positions that must be final (k + 1).
            exact_positions: candidate positions whose whole group must be put in exact
                order; the other groups keep the backend's float32 order.

        Returns:
            (indices [c, m], complete [c] bool). A row is complete when no sample
            outside its m candidates can enter its first `slots` positions.
        """
        num_rows, m = indices.shape
        distances = distances32.astype(np.float64)

        # [float32 order] Both backends return rows sorted by distance, which the
        # grouping below relies on. Equal distances stay in the backend's order,
        # which matters only for groups that are not resolved.
        unsorted = np.any(np.diff(distances, axis=1) < 0, axis=1)
        if np.any(unsorted):
            order = np.lexsort((indices[unsorted], distances[unsorted]), axis=1)
            distances[unsorted] = np.take_along_axis(distances[unsorted], order, axis=1)
            indices[unsorted] = np.take_along_axis(indices[unsorted], order, axis=1)

        # [calibration probes] first, middle and last candidate of every 8th row.
        probe = np.zeros((num_rows, m), dtype=bool)
        probe[::_PROBE_ROW_STEP, [0, m // 2, m - 1]] = True
        row_ids = np.arange(num_rows)[:, None]

        while True:
            # [groups] runs of candidates closer than 2 * tol in float32.
            linked = np.diff(distances, axis=1) <= 2.0 * self._tol
            group = np.zeros((num_rows, m), dtype=np.int64)
            np.cumsum(~linked, axis=1, out=group[:, 1:])
            in_group = np.zeros((num_rows, m), dtype=bool)
            in_group[:, 1:] |= linked
            in_group[:, :-1] |= linked

            # [groups to resolve] those that contain one of exact_positions.
            group_to_resolve = np.zeros((num_rows, m), dtype=bool)
            group_to_resolve[row_ids, group[:, exact_positions]] = True
            resolve = in_group & np.take_along_axis(group_to_resolve, group, axis=1)

            # [exact keys] for the groups to resolve and the calibration probes.
            rows, columns = np.nonzero(resolve | probe)
            pair_queries = query_ids[rows]
            major, minor = self._exact_pair_keys(pair_queries, indices[rows, columns])

            # [tolerance check] the measured float32 error must stay below tol / 4.
            exact = self._exact_keys.squared_distances(pair_queries, major, minor)
            max_error = float(np.max(np.abs(distances[rows, columns] - exact)))
            if 4.0 * max_error <= self._tol:
                break
            logging.info(
                "Raising the float32 distance tolerance from %.3g to %.3g after "
                "measuring an error of %.3g",
                self._tol,
                4.0 * max_error,
                max_error,
            )
            self._tol = 4.0 * max_error

        # [exact order] Groups keep their float32 order, and inside a resolved group
        # the exact key decides, then the index. Each group occupies contiguous
        # positions, so sorting the members by (row, group, keys, index) and writing
        # them back to the same positions in ascending order reorders every group.
        selected = resolve[rows, columns]
        rows, columns = rows[selected], columns[selected]
        major, minor = major[selected], minor[selected]
        members = indices[rows, columns]
        order = np.lexsort((members, minor, major, group[rows, columns], rows))
        indices[rows, columns] = members[order]

        if m >= self.num_samples:
            complete = np.ones(num_rows, dtype=bool)
        else:
            complete = group[:, slots - 1] != group[:, m - 1]
        return indices, complete

    def search(
        self,
        query_ids: np.ndarray,
        k: int,
        *,
        exact_prefix: int | None = None,
        exact_cuts: tuple[int, ...] = (),
    ) -> np.ndarray:
        """Return the k nearest other samples of each query, int64 [len(query_ids), k].

        Args:
            query_ids: indices of the query samples, int array [c].
            k: number of neighbours, 1 <= k <= N - 1.
            exact_prefix: the first `exact_prefix` neighbours are in exact order, and
                None means all k. Beyond it, neighbours whose float32 distances differ
                by less than about 2 * tol (1e-5 for D = 512) keep the backend's order.
            exact_cuts: for each b, the set of the first b neighbours is exact even
                beyond `exact_prefix`. Recall@K needs only these sets.
        """
        check_neighbour_count(k, self.num_samples)
        query_ids = np.asarray(query_ids, dtype=np.int64)
        slots = k + 1  # the query itself may take one of the leading positions
        m = initial_candidate_count(k, self.num_samples)

        # Candidate positions whose groups need the exact order. Output rank r sits at
        # candidate position r or r + 1, depending on where the query itself lands.
        prefix = k if exact_prefix is None else min(int(exact_prefix), k)
        positions = list(range(prefix + 1))
        for cut in exact_cuts:
            if 1 <= cut <= k:
                positions += [cut - 1, cut]
        exact_positions = np.unique(np.asarray(positions, dtype=np.int64))

        neighbours = np.empty((query_ids.shape[0], k), dtype=np.int64)
        pending = np.arange(query_ids.shape[0])
        while pending.size:
            ids = query_ids[pending]
            distances32, indices = self._searcher.search(self.unit_embeddings[ids], m)
            indices, complete = self._resolve_order(
                ids, distances32, indices, slots, exact_positions
            )

            # [drop self] The query is removed by index. When it is not among the first
            # `slots` (more than k exact duplicates have smaller indices), the last
            # slot is dropped instead.
            leading = indices[complete, :slots]
            is_self = leading == ids[complete, None]
            is_self[~is_self.any(axis=1), -1] = True
            neighbours[pending[complete]] = leading[~is_self].reshape(-1, k)

            pending = pending[~complete]
            if pending.size:
                logging.debug(
                    "%d queries need more than %d candidates; searching again",
                    pending.size,
                    m,
                )
            m = min(self.num_samples, 2 * m)
        return neighbours

    def iter_chunks(
        self,
        k: int,
        query_chunk_size: int | None = None,
        *,
        exact_prefix: int | None = None,
        exact_cuts: tuple[int, ...] = (),
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (query_ids [c], neighbours [c, k]) over all samples, chunk by chunk.

        `exact_prefix` and `exact_cuts` are passed to `search`.
        """
        if query_chunk_size is None:
            chunk = default_query_chunk_size(
                self.num_samples, initial_candidate_count(k, self.num_samples), self.backend
            )
        else:
            chunk = check_query_chunk_size(query_chunk_size)
        for start in range(0, self.num_samples, chunk):
            query_ids = np.arange(start, min(start + chunk, self.num_samples))
            yield query_ids, self.search(
                query_ids, k, exact_prefix=exact_prefix, exact_cuts=exact_cuts
            )


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_neighbour_count(k, num_samples: int) -> None:
    """Raise ValueError unless k is an int with 1 <= k <= num_samples - 1."""
    if not _is_int(k) or not 1 <= k <= num_samples - 1:
        raise ValueError(
            f"k must be an int between 1 and N - 1 = {num_samples - 1}, got {k!r}"
        )


def check_query_chunk_size(query_chunk_size) -> int:
    """Return `query_chunk_size` as an int, or raise ValueError unless it is a positive int."""
    if not _is_int(query_chunk_size) or query_chunk_size < 1:
        raise ValueError(
            f"query_chunk_size must be a positive int or None, got {query_chunk_size!r}"
        )
    return int(query_chunk_size)


def embeddings_to_neighbours(
    embeddings: np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    query_chunk_size: int | None = None,
) -> np.ndarray:
    """Find the k nearest other samples of every sample.

    Distances are squared Euclidean between L2-normalised rows. The query is excluded
    by index, and ties go to the smaller index (see the module docstring).

    Args:
        embeddings: float array [N, D].
        k: neighbours per sample, 1 <= k <= N - 1.
        backend: "faiss", "tensorflow" or "auto" (faiss when importable). Both give
            identical results.
        query_chunk_size: queries searched at once. None picks a 256 MiB float32
            distance block with TensorFlow, and 2**21 candidates (chunk * m) with faiss.

    Returns:
        int64 array [N, k]; row i lists neighbour indices of sample i, nearest first.
    """
    search = ExactNeighbourSearch(embeddings, backend=backend)
    check_neighbour_count(k, search.num_samples)
    neighbours = np.empty((search.num_samples, k), dtype=np.int64)
    for query_ids, chunk_neighbours in search.iter_chunks(k, query_chunk_size):
        neighbours[query_ids] = chunk_neighbours
    return neighbours
