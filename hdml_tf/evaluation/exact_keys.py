"""Exact comparison keys for squared Euclidean distances between unit vectors.

Neighbour search ranks candidates by float32 distances, whose rounding (about 1e-7)
differs between faiss, TensorFlow and BLAS builds. Where float32 cannot decide an
order, candidates are compared with the keys computed here, which are exact
functions of the float64 unit vectors and therefore identical for every backend.

Representation: each coordinate u of a unit vector is split into two integers,
u * 2**26 = high + low * 2**-L (both rounded to nearest), accurate to 2**-(27 + L).
For a query q and candidate x, with |x|^2 taken as exactly 1 (0 for an all-zero row),

    ||q - x||^2 - |q|^2 = |x|^2 - 2 q.x = (major * 2**L + minor) * 2**-(52 + L),

where major and minor are int64 and 0 <= minor < 2**L. The three integer dot products
high.high', high.low' and low.high' are computed in float64, and every partial sum
is an integer below 2**53 in magnitude (Cauchy-Schwarz, with L chosen from D), so
they are exact in any summation order. The rounding and the omitted low.low' term
move a distance by at most sqrt(D) 2**-(25 + L) + D 2**-53, 2.2e-13 for D = 512
(L = 22).
"""

import math

import numpy as np

HIGH_BITS = 26


def low_bits_for_dim(dim: int) -> int:
    """Return the largest L <= 26 for which the cross dot products high.low' stay exact.

    Needs |high|_2 |low|_2 <= 2**26 (1 + sqrt(D) 2**-27) * sqrt(D) 2**(L - 1) <= 2**52.
    """
    root = math.sqrt(dim)
    high_norm = 2.0**HIGH_BITS * (1.0 + root * 2.0 ** -(HIGH_BITS + 1))
    low_bits = HIGH_BITS
    while low_bits > 0 and high_norm * root * 2.0 ** (low_bits - 1) > 2.0**52:
        low_bits -= 1
    return low_bits


class ExactDistanceKeys:
    """Exact (major, minor) keys of |x|^2 - 2 q.x for pairs of unit vectors.

    Args:
        num_samples: N, the number of rows.
        dim: D, the number of columns.

    Fill the rows with `set_rows` before computing keys. Memory: two int32 arrays [N, D].
    """

    def __init__(self, num_samples: int, dim: int):
        self.low_bits = low_bits_for_dim(dim)
        self._high = np.zeros((num_samples, dim), dtype=np.int32)
        self._low = np.zeros((num_samples, dim), dtype=np.int32)
        self._nonzero = np.zeros(num_samples, dtype=bool)

    def set_rows(self, start: int, unit_rows: np.ndarray) -> None:
        """Store L2-normalised float64 rows [n, D] (all-zero rows allowed) from row `start` on."""
        stop = start + unit_rows.shape[0]
        scaled = unit_rows * 2.0**HIGH_BITS
        high = np.rint(scaled)
        # scaled - high is exact because high is the integer nearest to scaled.
        self._low[start:stop] = np.rint((scaled - high) * 2.0**self.low_bits)
        self._high[start:stop] = high
        self._nonzero[start:stop] = np.any(unit_rows != 0, axis=1)

    @staticmethod
    def _integer_dot(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Row-wise dot products of int32 rows [P, D] x [P, D] -> int64 [P], exact."""
        return np.einsum(
            "ij,ij->i", left.astype(np.float64), right.astype(np.float64)
        ).astype(np.int64)

    def keys(
        self, query_ids: np.ndarray, candidate_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Compute the keys of pairs (query_ids[p], candidate_ids[p]).

        Args:
            query_ids: int array [P].
            candidate_ids: int array [P].

        Returns:
            (major, minor), int64 [P] each. Ordering pairs of one query by
            (major, minor) orders them by distance, and equal keys mean equal
            distances of the rounded vectors.
        """
        query_high, query_low = self._high[query_ids], self._low[query_ids]
        candidate_high, candidate_low = self._high[candidate_ids], self._low[candidate_ids]
        high_dot = self._integer_dot(query_high, candidate_high)
        cross_dot = self._integer_dot(query_high, candidate_low) + self._integer_dot(
            query_low, candidate_high
        )

        # [carry] value = major * 2**L + minor with 0 <= minor < 2**L.
        norm_term = np.where(self._nonzero[candidate_ids], 2 ** (2 * HIGH_BITS), 0)
        major = norm_term - 2 * high_dot
        minor = -2 * cross_dot
        carry = np.floor_divide(minor, 2**self.low_bits)
        return major + carry, minor - carry * 2**self.low_bits

    def squared_distances(
        self, query_ids: np.ndarray, major: np.ndarray, minor: np.ndarray
    ) -> np.ndarray:
        """Convert keys to squared distances ||q - x||^2, float64 [P], for error checks."""
        query_norm = self._nonzero[query_ids].astype(np.float64)
        return (
            query_norm
            + major * 2.0 ** (-2 * HIGH_BITS)
            + minor * 2.0 ** (-2 * HIGH_BITS - self.low_bits)
        )
