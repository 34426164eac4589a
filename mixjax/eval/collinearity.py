"""Manifold intrusion / collinearity measure of Chidambaram et al. (ICLR 2022).

docs/THEORY.md §7. For each data point x_i of class k = y_i, the measure is

  D_i = min { ‖x_i − m_j‖₂ : m_j = λ_j x_{a_j} + (1 − λ_j) x_{b_j},
                             y_{a_j} ≠ k and y_{b_j} ≠ k },

the distance from x_i to the nearest mixup point whose two source classes both differ
from its own. A small D_i means mixup manufactures, near x_i, training points labelled
with classes other than k (manifold intrusion). The paper reports min_i D_i on
normalized images (e.g. CIFAR-10: 17.72 at α = 1024 on a 20% subsample).

The mixup points are a finite sample (`make_mixup_points`), so D_i is an upper bound
on the distance to the full (continuous) set of mixup points, estimated by Monte Carlo;
given the sample it is computed exactly, by `collinearity`:
  * the data are centered at their mean (distances are translation invariant; this
    shrinks the norms and hence the rounding of the expansion below);
  * blocks of points × blocks of mixup points give squared distances through
    ‖x‖² + ‖m‖² − 2 x·m (one matmul per block pair, HIGHEST precision), clamped at 0,
    masked to +inf where a source class equals the point's class, and reduced to a
    running minimum and argmin (`lax.map` over point blocks, `lax.scan` over mixup
    blocks; memory O(block_size × mix_block_size));
  * the returned distance is recomputed directly as ‖x_i − m_{argmin}‖, so it carries
    no cancellation error (only the argmin among near-ties can be affected).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import numpy as np
import jax
import jax.numpy as jnp


class MixupPoints(NamedTuple):
  """A sample of mixup points and the draw that made them.

  Attributes:
    points: (M, d) float32 mixup points λ x_a + (1 − λ) x_b (inputs flattened to d).
    source_labels: (M, 2) int32 labels (y_a, y_b).
    lam: (M,) float32 mixing weights λ.
    sources: (M, 2) int32 indices (a, b) into the data, a ≠ b.
  """
  points: jax.Array
  source_labels: jax.Array
  lam: jax.Array
  sources: jax.Array


def _flatten(x, name):
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"{name} must be (N, ...) with at least one feature axis, got {x.shape}.")
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def _check_labels(labels, shape, name):
  labels = jnp.asarray(labels)
  if labels.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}; "
                     "for one-hot labels pass jnp.argmax(y, -1).")
  return labels.astype(jnp.int32)


def make_mixup_points(key, x, labels, sampler, num_points: int) -> MixupPoints:
  """Draws `num_points` mixup points from the data (x, labels).

  Each point uses a uniformly random ordered pair (a, b) of distinct examples and
  λ = sampler(key, (num_points,)), the same convention as `mixjax.mixing.mix`
  (x_mix = λ x + (1 − λ) x[partner]). Keys are split per purpose (pairs, λ).

  Args:
    key: PRNG key.
    x: (N, ...) inputs; flattened to (N, d).
    labels: (N,) integer labels.
    sampler: a λ sampler, `sampler(key, shape) -> λ` in [0, 1] (`mixjax.samplers`).
    num_points: M, the number of mixup points.

  Returns:
    `MixupPoints` with the points, their source labels and the draw (λ, indices).
  """
  x = _flatten(x, "x")
  n = x.shape[0]
  labels = _check_labels(labels, (n,), "labels")
  if n < 2:
    raise ValueError(f"Need at least 2 examples to mix, got {n}.")
  if not isinstance(num_points, (int, np.integer)) or num_points < 1:
    raise ValueError(f"num_points must be a positive int, got {num_points!r}.")
  if not callable(sampler):
    raise ValueError(f"sampler must be callable as sampler(key, shape), got {sampler!r}; "
                     "build one with mixjax.samplers.make_sampler(name, ...).")
  key_a, key_b, key_lam = jax.random.split(key, 3)
  num_points = int(num_points)
  a = jax.random.randint(key_a, (num_points,), 0, n)
  b = (a + jax.random.randint(key_b, (num_points,), 1, n)) % n  # uniform over b ≠ a
  lam = jnp.asarray(sampler(key_lam, (num_points,)), jnp.float32)
  chex.assert_shape(lam, (num_points,))
  points = lam[:, None] * x[a] + (1.0 - lam[:, None]) * x[b]
  sources = jnp.stack([a, b], axis=1).astype(jnp.int32)
  return MixupPoints(points=points, source_labels=labels[sources], lam=lam,
                     sources=sources)


def _pad_to(a, multiple, value):
  pad = (-a.shape[0]) % multiple
  if not pad:
    return a
  widths = [(0, pad)] + [(0, 0)] * (a.ndim - 1)
  return jnp.pad(a, widths, constant_values=value)


@functools.partial(jax.jit, static_argnames=("block_size", "mix_block_size"))
def _nearest_other_class(x, labels, points, source_labels, *, block_size,
                         mix_block_size):
  """(N,) nearest admissible distance and (N,) its index (−1 when none is admissible)."""
  n, d = x.shape
  m = points.shape[0]
  center = jnp.mean(x, axis=0)
  x = x - center
  points = points - center
  bs, mbs = min(block_size, n), min(mix_block_size, m)

  xb = _pad_to(x, bs, 0.0).reshape(-1, bs, d)
  lb = _pad_to(labels, bs, -1).reshape(-1, bs)
  pb = _pad_to(points, mbs, 0.0).reshape(-1, mbs, d)
  sb = _pad_to(source_labels, mbs, -1).reshape(-1, mbs, 2)
  vb = _pad_to(jnp.ones((m,), bool), mbs, False).reshape(-1, mbs)
  offsets = jnp.arange(pb.shape[0], dtype=jnp.int32) * mbs
  psq = jnp.sum(jnp.square(pb), axis=-1)

  def point_block(args):
    xs, ls = args  # (bs, d), (bs,)
    xsq = jnp.sum(jnp.square(xs), axis=-1)

    def body(carry, blk):
      best, arg = carry
      ps, ps_sq, src, valid, offset = blk
      cross = jnp.dot(xs, ps.T, precision=jax.lax.Precision.HIGHEST)
      d2 = jnp.maximum(xsq[:, None] + ps_sq[None, :] - 2.0 * cross, 0.0)
      ok = (valid[None, :] & (src[None, :, 0] != ls[:, None])
            & (src[None, :, 1] != ls[:, None]))
      d2 = jnp.where(ok, d2, jnp.inf)
      j = jnp.argmin(d2, axis=1)
      v = jnp.take_along_axis(d2, j[:, None], axis=1)[:, 0]
      better = v < best
      return (jnp.where(better, v, best),
              jnp.where(better, j.astype(jnp.int32) + offset, arg)), None

    init = (jnp.full((bs,), jnp.inf, jnp.float32), jnp.full((bs,), -1, jnp.int32))
    (_, arg), _ = jax.lax.scan(body, init, (pb, psq, sb, vb, offsets))
    return arg

  arg = jax.lax.map(point_block, (xb, lb)).reshape(-1)[:n]
  found = arg >= 0
  nearest = points[jnp.maximum(arg, 0)]
  dist = jnp.sqrt(jnp.sum(jnp.square(x - nearest), axis=-1))
  return jnp.where(found, dist, jnp.inf), arg


def collinearity(x, labels, points, source_labels, *, block_size: int = 512,
                 mix_block_size: int = 4096, return_index: bool = False):
  """Per-point distance to the nearest mixup point of two other classes (see module doc).

  Args:
    x: (N, ...) data points (flattened to d; typically normalized images).
    labels: (N,) integer labels of x.
    points: (M, ...) mixup points with the same feature shape (e.g.
      `make_mixup_points(...).points`).
    source_labels: (M, 2) integer labels of the two sources of each mixup point.
    block_size: points per block (memory ~ block_size × mix_block_size floats).
    mix_block_size: mixup points per block.
    return_index: also return the index of the nearest admissible mixup point.

  Returns:
    (N,) float32 distances D_i (+inf when no mixup point avoids class y_i) and, with
    `return_index`, (N,) int32 indices into `points` (−1 when none). The paper's number
    is `jnp.min(D)`.
  """
  x = _flatten(x, "x")
  points = _flatten(points, "points")
  n, d = x.shape
  m = points.shape[0]
  if n < 1 or m < 1:
    raise ValueError(f"Need at least one point and one mixup point, got N={n}, M={m}.")
  if points.shape[1] != d:
    raise ValueError(
        f"points have {points.shape[1]} features but x has {d}; they must share the "
        "input shape.")
  labels = _check_labels(labels, (n,), "labels")
  source_labels = _check_labels(source_labels, (m, 2), "source_labels")
  for name, value in (("block_size", block_size), ("mix_block_size", mix_block_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}.")
  dist, arg = _nearest_other_class(x, labels, points, source_labels,
                                   block_size=int(block_size),
                                   mix_block_size=int(mix_block_size))
  return (dist, arg) if return_index else dist
