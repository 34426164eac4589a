"""Collinearity (Chidambaram et al.) against a brute-force NumPy double loop."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mixjax import samplers
from mixjax.eval import collinearity
from mixjax.eval import make_mixup_points


def _brute_force(x, labels, points, source_labels):
  """Double loop over (point, mixup point) in float64; inf when nothing is admissible."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  points = np.asarray(points, np.float64).reshape(len(points), -1)
  dist = np.full(len(x), np.inf)
  index = np.full(len(x), -1)
  for i in range(len(x)):
    for j in range(len(points)):
      if labels[i] in tuple(source_labels[j]):
        continue
      dij = np.sqrt(np.sum((x[i] - points[j]) ** 2))
      if dij < dist[i]:
        dist[i], index[i] = dij, j
  return dist, index


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_matches_brute_force(offset):
  rng = np.random.default_rng(0)
  n, num_classes = 37, 4
  x = (offset + rng.normal(size=(n, 3, 2, 2))).astype(np.float32)  # d = 12 after flatten
  labels = rng.integers(0, num_classes, size=n).astype(np.int32)
  mp = make_mixup_points(jax.random.key(0), x, labels, samplers.beta(1.0), 53)
  # Block sizes that do not divide N or M exercise the padding.
  dist, index = collinearity(x, labels, mp.points, mp.source_labels, block_size=8,
                             mix_block_size=16, return_index=True)
  want, want_index = _brute_force(x, labels, np.asarray(mp.points),
                                  np.asarray(mp.source_labels))
  assert dist.shape == (n,) and np.all(np.isfinite(want))
  np.testing.assert_allclose(dist, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(index, want_index)
  # Default block sizes (one block each) agree.
  np.testing.assert_allclose(collinearity(x, labels, mp.points, mp.source_labels),
                             want, rtol=1e-4, atol=1e-4)


def test_class_masking():
  x = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [9.0, 9.0]], np.float32)
  labels = np.array([0, 1, 2, 0], np.int32)
  points = np.array([
      [0.0, 0.0],   # on x_0, sources (0, 1): excluded for classes 0 and 1
      [0.3, 0.4],   # sources (1, 2): 0.5 away from x_0
      [4.0, 0.0],   # on x_1, sources (2, 2): admissible for classes 0 and 1
      [0.0, 4.0],   # on x_2, sources (0, 2): excluded for classes 0 and 2
  ], np.float32)
  source_labels = np.array([[0, 1], [1, 2], [2, 2], [0, 2]], np.int32)
  dist = np.asarray(collinearity(x, labels, points, source_labels))
  want, _ = _brute_force(x, labels, points, source_labels)
  np.testing.assert_allclose(dist, want, atol=1e-6)
  np.testing.assert_allclose(dist[0], 0.5, atol=1e-6)  # not 0: its own point is masked
  assert dist[1] == 0.0  # exact zero (clamped, no NaN) to the (2, 2) point on x_1
  np.testing.assert_allclose(dist[2], 4.0, atol=1e-6)  # not 0: only the (0, 1) point counts
  np.testing.assert_allclose(dist[3], np.hypot(5.0, 9.0), atol=1e-5)
  # A point of a class present in every mixup point has no admissible neighbour.
  only_own = collinearity(x, labels, points[:1], source_labels[:1])
  np.testing.assert_array_equal(only_own, [np.inf, np.inf, 4.0, np.inf])


def test_make_mixup_points_returns_its_draw():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(20, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=20).astype(np.int32)
  key = jax.random.key(3)
  mp = make_mixup_points(key, x, labels, samplers.beta(1.0), 500)
  a, b = np.asarray(mp.sources).T
  lam = np.asarray(mp.lam)[:, None]
  flat = x.reshape(20, -1)
  assert mp.points.shape == (500, 6) and mp.source_labels.shape == (500, 2)
  np.testing.assert_allclose(mp.points, lam * flat[a] + (1 - lam) * flat[b], atol=1e-6)
  np.testing.assert_array_equal(mp.source_labels, labels[np.asarray(mp.sources)])
  assert np.all(a != b) and np.all((0 <= a) & (a < 20)) and np.all((0 <= b) & (b < 20))
  assert np.all((lam >= 0) & (lam <= 1)) and np.std(lam) > 0.1
  # Deterministic in the key; a different key gives a different draw.
  again = make_mixup_points(key, x, labels, samplers.beta(1.0), 500)
  np.testing.assert_array_equal(again.points, mp.points)
  other = make_mixup_points(jax.random.key(4), x, labels, samplers.beta(1.0), 500)
  assert not np.array_equal(other.sources, mp.sources)
  half = make_mixup_points(key, x, labels, samplers.constant(0.5), 50)
  np.testing.assert_allclose(half.lam, 0.5)


def test_bad_inputs_raise():
  x = np.zeros((5, 3), np.float32)
  labels = np.zeros(5, np.int32)
  with pytest.raises(ValueError, match="features"):
    collinearity(x, labels, np.zeros((4, 2), np.float32), np.zeros((4, 2), np.int32))
  with pytest.raises(ValueError, match="source_labels"):
    collinearity(x, labels, np.zeros((4, 3), np.float32), np.zeros((4,), np.int32))
  with pytest.raises(ValueError, match="integer"):
    collinearity(x, labels.astype(np.float32), x, np.zeros((5, 2), np.int32))
  with pytest.raises(ValueError, match="callable"):
    make_mixup_points(jax.random.key(0), x, labels, "beta", 10)
  with pytest.raises(ValueError, match="num_points"):
    make_mixup_points(jax.random.key(0), x, labels, samplers.beta(1.0), 0)


def test_default_block_sizes_with_several_point_blocks():
  """The default block sizes over more points than one block (600 = 512 + a padded
  88) and d = 64: every distance equals NumPy's brute force. (Speed is a benchmark's
  business, not a test's.)"""
  rng = np.random.default_rng(2)
  n, m, d = 600, 300, 64
  x = rng.normal(size=(n, d)).astype(np.float32)
  labels = rng.integers(0, 10, size=n).astype(np.int32)
  mp = make_mixup_points(jax.random.key(0), x, labels, samplers.beta(1.0), m)
  dist = np.asarray(collinearity(x, labels, mp.points, mp.source_labels))
  points, src = np.asarray(mp.points, np.float64), np.asarray(mp.source_labels)
  sq = np.sum((x[:, None, :].astype(np.float64) - points[None]) ** 2, -1)  # (n, m)
  other = (src[None, :, 0] != labels[:, None]) & (src[None, :, 1] != labels[:, None])
  want = np.sqrt(np.min(np.where(other, sq, np.inf), axis=1))
  assert dist.shape == (n,) and np.all(np.isfinite(want))
  np.testing.assert_allclose(dist, want, rtol=1e-4)
