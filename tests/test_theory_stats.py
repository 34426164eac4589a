"""Tests for mixjax.theory.stats: data statistics against NumPy references (float64)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mixjax.theory import DataStats, StatsAccumulator, data_stats


pytestmark = pytest.mark.usefixtures("x64")  # float64 for this module (conftest.py)


def _data(n=40, shape=(2, 3), c=4, seed=0, offset=0.0):
  rng = np.random.default_rng(seed)
  x = offset + rng.normal(size=(n,) + shape) @ np.diag(np.linspace(0.5, 2.0, shape[-1]))
  y = rng.dirichlet(np.ones(c), size=n)
  return x, y


def _np_cov(x, y):
  """(Σ_xx, Σ_xy, Σ_yy) with 1/n from np.cov(..., bias=True) on the stacked variables."""
  d = x.reshape(len(x), -1).shape[1]
  cov = np.cov(np.concatenate([x.reshape(len(x), -1), y], axis=1), rowvar=False, bias=True)
  return cov[:d, :d], cov[:d, d:], cov[d:, d:]


def test_data_stats_matches_numpy_cov():
  x, y = _data()
  st = data_stats(x, y)
  sxx, sxy, syy = _np_cov(x, y)
  assert isinstance(st, DataStats)
  assert st.input_shape == (2, 3) and st.n == 40 and st.dim == 6 and st.num_classes == 4
  np.testing.assert_allclose(st.x_mean, x.reshape(40, -1).mean(0), rtol=1e-13)
  np.testing.assert_allclose(st.y_mean, y.mean(0), rtol=1e-13)
  np.testing.assert_allclose(st.sxx, sxx, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(st.sxy, sxy, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(st.syy, syy, rtol=1e-12, atol=1e-14)
  assert st.eigvecs is None and st.eigvals is None and st.rank is None


def test_accumulator_uneven_batches_equals_one_shot():
  x, y = _data(n=57, seed=1)
  one_shot = data_stats(x, y)
  acc = StatsAccumulator()
  for lo, hi in [(0, 1), (1, 8), (8, 11), (11, 11), (11, 40), (40, 57)]:
    acc.update(x[lo:hi], y[lo:hi])
  streamed = acc.finalize()
  assert streamed.n == 57
  for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(one_shot)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  # Merging two accumulators (e.g. two hosts) gives the same statistics.
  a1 = StatsAccumulator().update(x[:20], y[:20])
  a2 = StatsAccumulator().update(x[20:33], y[20:33]).update(x[33:], y[33:])
  merged = a1.merge(a2).finalize()
  np.testing.assert_allclose(merged.sxx, one_shot.sxx, rtol=1e-12, atol=1e-14)


def test_accumulator_is_stable_under_large_offset():
  # Spread 1 around an offset of 1e8: the naive E[xxᵀ] − x̄x̄ᵀ would lose every digit.
  x, y = _data(n=64, shape=(3,), seed=2, offset=1e8)
  acc = StatsAccumulator()
  for lo in range(0, 64, 5):
    acc.update(x[lo:lo + 5], y[lo:lo + 5])
  st = acc.finalize()
  x_c = x - x.mean(0)  # two-pass reference
  reference = x_c.T @ x_c / 64
  # Input rounding alone is ~1e8 · 2e-16 per entry; the naive formula's error is O(1).
  np.testing.assert_allclose(st.sxx, reference, rtol=1e-6)
  naive = (x.T @ x) / 64 - np.outer(x.mean(0), x.mean(0))
  assert np.max(np.abs(naive - reference)) > 1e-3


def test_rank_k_eigenpairs_match_eigh():
  x, y = _data(n=50, shape=(6,), seed=3)
  st = data_stats(x, y, rank=3)
  assert st.sxx is None and st.rank == 3
  vals, vecs = np.linalg.eigh(_np_cov(x, y)[0])
  np.testing.assert_allclose(st.eigvals, vals[::-1][:3], rtol=1e-10)
  # Eigenvectors up to sign: |<v_k, w_k>| = 1 and the projectors agree.
  top = vecs[:, ::-1][:, :3]
  np.testing.assert_allclose(np.abs(np.sum(np.asarray(st.eigvecs) * top, 0)), 1.0, rtol=1e-9)
  np.testing.assert_allclose(st.eigvecs @ st.eigvecs.T, top @ top.T, atol=1e-9)
  # Full rank reconstructs Σ_xx.
  full = data_stats(x, y, rank=6)
  np.testing.assert_allclose((full.eigvecs * full.eigvals) @ full.eigvecs.T,
                             _np_cov(x, y)[0], atol=1e-12)


def test_stats_is_a_pytree_through_jit():
  x, y = _data(n=10)
  st = data_stats(x, y)
  out = jax.jit(lambda s: s.sxx.sum() + s.n)(st)
  np.testing.assert_allclose(out, np.sum(_np_cov(x, y)[0]) + 10, rtol=1e-12)


@pytest.mark.parametrize("rank", [0, 7, -1, 2.0])
def test_bad_rank_raises(rank):
  x, y = _data(n=10, shape=(6,))
  with pytest.raises(ValueError, match="rank"):
    data_stats(x, y, rank=rank)


def test_bad_inputs_raise():
  x, y = _data(n=10)
  with pytest.raises(ValueError, match="Batch size mismatch"):
    data_stats(x, y[:9])
  with pytest.raises(ValueError, match="one_hot"):
    data_stats(x, np.arange(10))
  acc = StatsAccumulator().update(x, y)
  with pytest.raises(ValueError, match="shapes changed"):
    acc.update(x.reshape(10, 6), y)
  with pytest.raises(ValueError, match="No data"):
    StatsAccumulator().finalize()
