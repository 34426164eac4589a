"""Data statistics that the mixup theory needs: means and covariances (docs/THEORY.md, Setup).

    x̄ = (1/n) Σ_i x_i,   ȳ = (1/n) Σ_i y_i,
    Σ_xx = (1/n) Σ_i (x_i − x̄)(x_i − x̄)ᵀ,  Σ_xy, Σ_yy likewise (1/n, not 1/(n − 1)).

Inputs of any trailing shape are flattened to d = prod(shape[1:]); the original trailing
shape is kept as static metadata (`DataStats.input_shape`) so that `transform` can map
flattened means back onto images. For large d (CIFAR: 3072) the dense d×d Σ_xx can be
replaced by its top-k eigenpairs (`rank=k`), which is all the low-rank estimator of the
approximate risk needs (docs/THEORY.md §4, "Estimators that scale").

Everything is accumulated on the host in float64 with the pairwise update of Chan, Golub
and LeVeque (1979), so streaming a dataset batch by batch (`StatsAccumulator`) gives the
statistics of the concatenation to rounding error, also when the data have a large offset
relative to their spread (where the naive Σxxᵀ/n − x̄x̄ᵀ loses all digits).

`cached_data_stats` keeps the statistics of a dataset in an .npz file, reused only when
the fingerprint of the data stored with it (any JSON-able dict the caller builds) is the
same.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Optional, Tuple

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


@flax.struct.dataclass
class DataStats:
  """Means and (1/n) covariances of a dataset (docs/THEORY.md, Setup); a JAX pytree.

  The dataset is the whole training set (`data_stats(x_train, y_train)`, or every batch
  of it streamed through `StatsAccumulator`), never the current batch: the same
  `DataStats` goes to every step (`approx_mixup_risk`, `transform`, `rescaled`).

  Attributes:
    x_mean: x̄, (d,).
    y_mean: ȳ, (c,).
    sxx: Σ_xx, (d, d), or None when only the top-k eigenpairs were kept (`rank=k`).
    sxy: Σ_xy, (d, c), or None for means-only statistics (`StatsAccumulator(means_only=True)`,
      a streamed split's).
    syy: Σ_yy, (c, c), or None likewise.
    eigvecs: (d, k) orthonormal top-k eigenvectors of Σ_xx (columns, eigenvalues in
      decreasing order), or None.
    eigvals: (k,) the matching eigenvalues (≥ 0, decreasing), or None.
    n: number of examples (static).
    input_shape: the trailing shape of one input before flattening (static), e.g.
      (32, 32, 3); prod(input_shape) = d.
  """
  x_mean: jax.Array
  y_mean: jax.Array
  sxx: Optional[jax.Array]
  sxy: Optional[jax.Array]
  syy: Optional[jax.Array]
  eigvecs: Optional[jax.Array]
  eigvals: Optional[jax.Array]
  n: int = flax.struct.field(pytree_node=False)
  input_shape: Tuple[int, ...] = flax.struct.field(pytree_node=False)

  @property
  def dim(self) -> int:
    """d, the flattened input dimension."""
    return self.x_mean.shape[-1]

  @property
  def num_classes(self) -> int:
    """c, the label dimension."""
    return self.y_mean.shape[-1]

  @property
  def rank(self) -> Optional[int]:
    """k, the number of kept eigenpairs, or None."""
    return None if self.eigvecs is None else self.eigvecs.shape[-1]


def _as_2d(x: Any, y: Any) -> Tuple[np.ndarray, np.ndarray, Tuple[int, ...]]:
  """Host float64 copies: x flattened to (B, d), y (B, c); plus x's trailing shape."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.ndim < 1:
    raise ValueError(f"x must have a batch axis, shape (B, ...); got shape {x.shape}.")
  if y.ndim != 2:
    raise ValueError(
        f"Labels must have shape (B, c) (one-hot or soft, float); got shape {y.shape}. "
        "Convert integer class ids with `jax.nn.one_hot(y, num_classes)`.")
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"Batch size mismatch: x has {x.shape[0]} examples, y has {y.shape[0]}. "
        "Pass x of shape (B, ...) and y of shape (B, c).")
  input_shape = tuple(int(s) for s in x.shape[1:])
  return x.reshape(x.shape[0], math.prod(input_shape)), y, input_shape


class StatsAccumulator:
  """Streams (x, y) batches into `DataStats`, in float64 on the host.

  Keeps the count n, the joint mean of z = [x_flat, y] ((d + c),) and the co-moment
  matrix C = Σ_i (z_i − z̄)(z_i − z̄)ᵀ ((d + c) × (d + c)). Two parts (n_a, z̄_a, C_a) and
  (n_b, z̄_b, C_b) merge as (Chan et al., 1979)

      n = n_a + n_b,  Δ = z̄_b − z̄_a,  z̄ = z̄_a + Δ n_b / n,
      C = C_a + C_b + Δ Δᵀ n_a n_b / n,

  which is exact in exact arithmetic and numerically stable, so any split of the data
  into batches (uneven included) gives the one-shot statistics to rounding error.

  `means_only=True` keeps n and z̄ alone (the same arithmetic, so the same means bit for
  bit) and skips C, the (d + c)² cost: for users of x̄ and ȳ only (test-time rescaling,
  the methods without `needs_covariance`); its `finalize` has Σ = None.

  Usage:
    acc = StatsAccumulator()
    for x, y in batches:
      acc.update(x, y)
    stats = acc.finalize(rank=None)
  """

  def __init__(self, means_only: bool = False):
    self.means_only = bool(means_only)
    self.n = 0
    self._mean: Optional[np.ndarray] = None
    self._comoment: Optional[np.ndarray] = None
    self._input_shape: Optional[Tuple[int, ...]] = None
    self._num_classes: Optional[int] = None

  def _merge(self, n_b: int, mean_b: np.ndarray, comoment_b: Optional[np.ndarray]) -> None:
    if self.n == 0:
      self.n, self._mean, self._comoment = n_b, mean_b, comoment_b
      return
    n_a = self.n
    n = n_a + n_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n_b / n)
    if not self.means_only:
      self._comoment = (self._comoment + comoment_b
                        + np.outer(delta, delta) * (n_a * n_b / n))
    self.n = n

  def update(self, x: Any, y: Any) -> "StatsAccumulator":
    """Adds a batch: x (B, ...) with the same trailing shape every time, y (B, c).

    Returns:
      self, so that calls chain.
    """
    x2, y2, input_shape = _as_2d(x, y)
    if self._input_shape is None:
      self._input_shape, self._num_classes = input_shape, y2.shape[1]
    elif input_shape != self._input_shape or y2.shape[1] != self._num_classes:
      raise ValueError(
          f"Batch shapes changed: earlier batches had inputs {self._input_shape} and "
          f"{self._num_classes} classes, this one has inputs {input_shape} and "
          f"{y2.shape[1]} classes. Every batch must have the same trailing shapes.")
    if x2.shape[0] == 0:
      return self
    z = np.concatenate([x2, y2], axis=1)
    mean_b = z.mean(axis=0)
    if self.means_only:
      self._merge(z.shape[0], mean_b, None)
      return self
    zc = z - mean_b
    self._merge(z.shape[0], mean_b, zc.T @ zc)
    return self

  def merge(self, other: "StatsAccumulator") -> "StatsAccumulator":
    """Adds everything `other` has seen (e.g. another host's shard). Returns self."""
    if other.n == 0:
      return self
    if other.means_only != self.means_only:
      raise ValueError("Cannot merge a means-only accumulator with a full one.")
    if self._input_shape is not None and (
        other._input_shape != self._input_shape or other._num_classes != self._num_classes):
      raise ValueError(
          f"Cannot merge accumulators with different shapes: inputs {self._input_shape} vs "
          f"{other._input_shape}, classes {self._num_classes} vs {other._num_classes}.")
    self._input_shape, self._num_classes = other._input_shape, other._num_classes
    self._merge(other.n, other._mean.copy(),
                None if other._comoment is None else other._comoment.copy())
    return self

  def finalize(self, rank: Optional[int] = None) -> DataStats:
    """The statistics of everything seen so far.

    Args:
      rank: None keeps the dense Σ_xx (and no eigenpairs). An integer k in [1, d] keeps
        the top-k eigenpairs of Σ_xx (exact, from a float64 symmetric eigensolver) and
        no dense Σ_xx, for large d.

    Returns:
      `DataStats` with jnp arrays (float64 when x64 is enabled, float32 otherwise); for a
      means-only accumulator, x̄, ȳ and n, with Σ_xx, Σ_xy, Σ_yy and the eigenpairs None.
    """
    if self.n == 0:
      raise ValueError("No data: call update(x, y) with at least one example before finalize().")
    d = math.prod(self._input_shape)
    if self.means_only:
      if rank is not None:
        raise ValueError("A means-only accumulator has no covariance to take eigenpairs "
                         "of: use rank=None, or StatsAccumulator(means_only=False).")
      return DataStats(x_mean=jnp.asarray(self._mean[:d]), y_mean=jnp.asarray(self._mean[d:]),
                       sxx=None, sxy=None, syy=None, eigvecs=None, eigvals=None,
                       n=int(self.n), input_shape=tuple(self._input_shape))
    if rank is not None:
      if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be None or an integer in [1, d={d}]; got {rank!r}.")
      if not 1 <= rank <= d:
        raise ValueError(
            f"rank={rank} is impossible for inputs of dimension d={d}: use 1 <= rank <= {d}, "
            "or rank=None for the dense covariance.")
    cov = self._comoment / self.n
    sxx, sxy, syy = cov[:d, :d], cov[:d, d:], cov[d:, d:]
    eigvecs = eigvals = None
    if rank is not None:
      vals, vecs = scipy.linalg.eigh(sxx, subset_by_index=[d - rank, d - 1])
      vals, vecs = vals[::-1], vecs[:, ::-1]
      # Deterministic signs: the largest-magnitude entry of each eigenvector is positive.
      signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(rank)])
      vecs = vecs * np.where(signs == 0, 1.0, signs)
      eigvals, eigvecs = jnp.asarray(np.maximum(vals, 0.0)), jnp.asarray(vecs)
      sxx = None
    return DataStats(
        x_mean=jnp.asarray(self._mean[:d]),
        y_mean=jnp.asarray(self._mean[d:]),
        sxx=None if sxx is None else jnp.asarray(sxx),
        sxy=jnp.asarray(sxy),
        syy=jnp.asarray(syy),
        eigvecs=eigvecs,
        eigvals=eigvals,
        n=int(self.n),
        input_shape=tuple(self._input_shape))


def data_stats(x: Any, y: Any, *, rank: Optional[int] = None) -> DataStats:
  """Means and (1/n) covariances of (x, y) (docs/THEORY.md, Setup), float64 on the host.

  Where the data comes from: the whole training set, `data_stats(x_train, y_train)`, or,
  when it does not fit in memory, every batch of it streamed through `StatsAccumulator`;
  never one batch. Theorem 1's x̄, ȳ and Σ are the training distribution's: the
  statistics of a batch are a noisy estimate that changes every step, which shifts x̃, ỹ
  and the approximate risk's terms. Compute them once before training (the trainer does,
  and caches them in WORKDIR/data_stats.npz) and pass the same `DataStats` to every step.

  Args:
    x: inputs (n, ...), any trailing shape (flattened to d): the whole training set.
    y: labels (n, c), one-hot or soft.
    rank: None for the dense Σ_xx; k in [1, d] for its top-k eigenpairs only.

  Returns:
    `DataStats`; equal to streaming the same rows through `StatsAccumulator`.
  """
  return StatsAccumulator().update(x, y).finalize(rank=rank)


def check_stats(stats: DataStats, d: int, c: int, *, where: str = "") -> None:
  """Raises ValueError unless `stats` describe inputs of dimension d and c classes."""
  if stats.dim != d or stats.num_classes != c:
    raise ValueError(
        f"{where + ': ' if where else ''}the data statistics are for inputs of dimension "
        f"{stats.dim} (shape {stats.input_shape}) with {stats.num_classes} classes, but x "
        f"has dimension {d} and y has {c} classes. Compute the stats with "
        "`data_stats(x_train, y_train)` on data shaped like x and y.")


_STATS_ARRAYS = ("x_mean", "y_mean", "sxx", "sxy", "syy", "eigvecs", "eigvals")


def cached_data_stats(path: str, fingerprint: Mapping[str, Any], x: Any, y: Any, *,
                      num_classes: Optional[int] = None, rank: Optional[int] = None,
                      write: bool = True, chunk_size: int = 4096,
                      means_only: bool = False) -> DataStats:
  """`data_stats(x, y, rank=rank)` (or, with `means_only`, x̄ and ȳ alone), cached in
  the .npz file `path`.

  The file is used when the fingerprint stored in it equals `fingerprint` (a JSON-able
  dict that identifies the data and `rank`, e.g. dataset, split, seed, n); otherwise
  the statistics are computed (streamed through `StatsAccumulator` in chunks of
  `chunk_size` rows) and, if `write`, saved with the fingerprint (atomically: written
  to a temporary file and renamed).

  Args:
    path: the cache file.
    fingerprint: identifies the statistics; compared after a JSON round trip.
    x: inputs (n, ...).
    y: labels (n, c), one-hot or soft; or (n,) integer class ids when `num_classes` is
      given (one-hot encoded chunk by chunk).
    num_classes: c, for integer labels.
    rank: as for `data_stats`.
    write: save the computed statistics (e.g. only on process 0 of a multi-host run).
    chunk_size: rows per accumulated chunk.
    means_only: x̄ and ȳ alone (`StatsAccumulator(means_only=True)`); the fingerprint
      should say so, so that a cached file serves only the kind it holds.
  """
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      if json.loads(str(z["fingerprint"])) == fingerprint:
        get = lambda k: jnp.asarray(z[k]) if k in z.files else None
        logging.info("Loaded data statistics from %s.", path)
        return DataStats(
            x_mean=get("x_mean"), y_mean=get("y_mean"), sxx=get("sxx"), sxy=get("sxy"),
            syy=get("syy"), eigvecs=get("eigvecs"), eigvals=get("eigvals"), n=int(z["n"]),
            input_shape=tuple(int(s) for s in z["input_shape"]))
  t0 = time.time()
  acc = StatsAccumulator(means_only=means_only)
  for i in range(0, x.shape[0], chunk_size):
    yb = y[i:i + chunk_size]
    if num_classes is not None:
      yb = np.eye(num_classes)[yb]
    acc.update(x[i:i + chunk_size], yb)
  stats = acc.finalize(rank=rank)
  logging.info("Computed data statistics in %.1fs.", time.time() - t0)
  if write:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    arrays = {k: np.asarray(getattr(stats, k)) for k in _STATS_ARRAYS
              if getattr(stats, k) is not None}
    tmp = path + ".tmp.npz"
    np.savez(tmp, fingerprint=json.dumps(dict(fingerprint)), n=stats.n,
             input_shape=np.asarray(stats.input_shape, np.int64), **arrays)
    os.replace(tmp, path)
  return stats
