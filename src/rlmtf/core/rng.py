"""Counter-based random numbers, vectorised in numpy.

Every random draw of a simulation is a pure function of (seed, stream, keys): a user, a day, a
session, a request, an item. Two policies run on the same seed therefore see *common random
numbers*: the same users open the app, get the same candidates at the same request, and react
identically to the same item, so an A/B difference measures the policies and not the dice.
Batching also cannot change results. The mixer is SplitMix64's finaliser, applied to uint64 arrays
(numpy wraps uint64 arithmetic modulo 2^64).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / float(1 << 53)


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixed map of uint64 arrays."""
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def key(*parts) -> np.ndarray:
    """Combine integer keys (scalars or broadcastable arrays) into one uint64 key array."""
    with np.errstate(over="ignore"):
        h = np.zeros((), dtype=np.uint64)
        for p in parts:
            h = mix(h ^ np.asarray(p).astype(np.uint64, copy=False))
        return h


def uniform(k: np.ndarray, stream: int) -> np.ndarray:
    """U[0, 1) floats, one per element of the key array ``k``, for a given stream id."""
    with np.errstate(over="ignore"):
        x = mix(k ^ mix(np.uint64(stream)))
    return (x >> _S11).astype(np.float64) * _INV53


def normal(k: np.ndarray, stream: int) -> np.ndarray:
    """Standard normal draws by the inverse CDF of :func:`uniform` (kept off 0)."""
    u = uniform(k, stream)
    return ndtri(np.clip(u, 1e-12, 1 - 1e-12))


_NORMAL_TABLE = ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)  # 16-bit inverse-CDF normal table
_MASK32 = np.uint64(0xFFFFFFFF)


def uniform_pair(k: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Two independent U[0, 1) arrays (32-bit resolution) from one hash of each key."""
    with np.errstate(over="ignore"):
        x = mix(k ^ mix(np.uint64(stream)))
    inv = 1.0 / 4294967296.0
    return (x >> np.uint64(32)).astype(np.float64) * inv, (x & _MASK32).astype(np.float64) * inv


def _lanes16(k: np.ndarray, stream: int, n: int) -> np.ndarray:
    """n 16-bit lanes per key from ceil(n / 4) chained hashes: k.shape + (n,) uint16."""
    with np.errstate(over="ignore"):
        xs = [mix(k ^ mix(np.uint64(stream)))]
        while 4 * len(xs) < n:
            xs.append(mix(xs[-1]))
    return np.stack(xs, -1).view(np.uint16)[..., :n]


def uniforms16(k: np.ndarray, stream: int, n: int) -> np.ndarray:
    """n U(0, 1) float32 draws per key with 16-bit resolution (mid-points of 65536 bins), k.shape + (n,).
    Four draws per hash: for per-candidate exploration noise on every candidate of a request."""
    return (_lanes16(k, stream, n).astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / 65536)


def normals(k: np.ndarray, stream: int, n: int) -> np.ndarray:
    """n approximately standard-normal float32 draws per key (16-bit quantised inverse CDF), k.shape + (n,)."""
    return _NORMAL_TABLE[_lanes16(k, stream, n)]


def normals5(k: np.ndarray, stream: int) -> np.ndarray:
    """Five approximately standard-normal draws per key: the MTL model's per-pair, per-task noise on
    every candidate, where one full-precision normal per task would dominate the cost."""
    return normals(k, stream, 5)
