"""Tests for mixjax.mixing.mix: NumPy reference given the returned draw, pairing, λ law."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mixjax import mixing
from mixjax import samplers


def _batch(batch_size, trailing=(5,), num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch_size,) + trailing).astype(np.float32)
  y = rng.dirichlet(np.ones(num_classes), size=batch_size).astype(np.float32)
  return x, y


def _np_mix(x, y, lam, partner):
  """Independent NumPy mixing, float64, from the draw that mix() returned."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  lam = np.asarray(lam, np.float64)
  lx = lam.reshape((-1,) + (1,) * (x.ndim - 1))
  x_mix = np.stack([lx[i] * x[i] + (1 - lx[i]) * x[p] for i, p in enumerate(partner)])
  y_mix = np.stack([lam[i] * y[i] + (1 - lam[i]) * y[p] for i, p in enumerate(partner)])
  return x_mix, y_mix


@pytest.mark.parametrize("granularity", ["example", "batch"])
@pytest.mark.parametrize("pairing", ["permutation", "reverse"])
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("batch_size,trailing", [(8, (5,)), (7, (4, 4, 3)), (1, (2,))])
def test_mix_matches_numpy(granularity, pairing, fold, batch_size, trailing):
  x, y = _batch(batch_size, trailing)
  x_mix, y_mix, lam, partner, _ = mixing.mix(
      jax.random.key(3), x, y, samplers.beta(0.4), granularity=granularity,
      pairing=pairing, fold=fold)
  assert x_mix.shape == x.shape and y_mix.shape == y.shape
  assert lam.shape == (batch_size,) and lam.dtype == jnp.float32
  assert partner.shape == (batch_size,) and partner.dtype == jnp.int32
  assert np.all((np.asarray(lam) >= 0) & (np.asarray(lam) <= 1))
  if fold:
    assert np.all(np.asarray(lam) >= 0.5)
  ref_x, ref_y = _np_mix(x, y, lam, np.asarray(partner))
  np.testing.assert_allclose(x_mix, ref_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y_mix, ref_y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 7, 16])
def test_partner_is_a_permutation(batch_size):
  perms = [np.asarray(mixing.mix(jax.random.key(k), *_batch(batch_size), samplers.uniform())[3])
           for k in range(5)]
  for p in perms:
    np.testing.assert_array_equal(np.sort(p), np.arange(batch_size))
  if batch_size >= 7:  # 5 draws all equal to one permutation of 7! would be a bug.
    assert len({tuple(p) for p in perms}) > 1


@pytest.mark.parametrize("batch_size", [1, 6, 7])
def test_reverse_pairing(batch_size):
  x, y = _batch(batch_size)
  x_mix, _, lam, partner, _ = mixing.mix(
      jax.random.key(0), x, y, samplers.beta(1.0), pairing="reverse")
  np.testing.assert_array_equal(partner, np.arange(batch_size)[::-1])
  if batch_size % 2:  # The middle example is paired with itself: it is unchanged.
    mid = batch_size // 2
    np.testing.assert_allclose(x_mix[mid], x[mid], rtol=1e-6)


def test_permutation_is_uniform_in_law():
  # P(π(0) = j) = 1/B for every j: chi-square test over many keys.
  batch_size, num_keys = 5, 4000
  x, y = _batch(batch_size)
  draw = jax.jit(jax.vmap(lambda k: mixing.mix(k, x, y, samplers.uniform())[3]))
  partner = np.asarray(draw(jax.random.split(jax.random.key(1), num_keys)))
  counts = np.bincount(partner[:, 0], minlength=batch_size)
  assert scipy.stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("alpha", [0.3, 2.0])
def test_example_lambda_law_ks(alpha):
  batch_size = 4000
  x, y = _batch(batch_size, (1,))
  lam = np.asarray(mixing.mix(jax.random.key(7), x, y, samplers.beta(alpha))[2], np.float64)
  assert scipy.stats.kstest(lam, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-4


def test_folded_lambda_law_ks():
  # θ = max(λ, 1−λ) for λ ~ Beta(α, α) has CDF 2 F(t) − 1 on [½, 1].
  alpha, batch_size = 0.5, 4000
  x, y = _batch(batch_size, (1,))
  lam = np.asarray(
      mixing.mix(jax.random.key(8), x, y, samplers.beta(alpha), fold=True)[2], np.float64)
  cdf = lambda t: np.clip(2 * scipy.stats.beta(alpha, alpha).cdf(t) - 1, 0, 1)
  assert scipy.stats.kstest(lam, cdf).pvalue > 1e-4


def test_batch_granularity_shares_lambda():
  x, y = _batch(9)
  lams = [np.asarray(mixing.mix(jax.random.key(k), x, y, samplers.beta(1.0),
                                granularity="batch")[2]) for k in range(4)]
  for lam in lams:
    np.testing.assert_array_equal(lam, np.full_like(lam, lam[0]))
  assert len({float(lam[0]) for lam in lams}) > 1  # a new draw per key


def test_lambda_and_partner_use_separate_streams():
  x, y = _batch(10)
  key = jax.random.key(11)
  _, _, lam_p, part_p, _ = mixing.mix(key, x, y, samplers.beta(1.0), pairing="permutation")
  _, _, lam_r, _, _ = mixing.mix(key, x, y, samplers.beta(1.0), pairing="reverse")
  _, _, _, part_c, _ = mixing.mix(key, x, y, samplers.constant(0.3), pairing="permutation")
  np.testing.assert_array_equal(lam_p, lam_r)    # pairing does not move λ
  np.testing.assert_array_equal(part_p, part_c)  # the λ law does not move the partners


def test_mixed_images_stay_float():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
  y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, size=6)]
  x_mix, _, lam, partner, _ = mixing.mix(jax.random.key(0), x, y, samplers.constant(0.3))
  assert jnp.issubdtype(x_mix.dtype, jnp.floating)
  ref, _ = _np_mix(x, y, lam, np.asarray(partner))
  np.testing.assert_allclose(x_mix, ref, rtol=1e-5)  # not rounded back to integers


def test_jit_matches_eager():
  x, y = _batch(8, (3, 2))
  sampler = samplers.beta(0.7)
  fn = lambda k, x, y: mixing.mix(k, x, y, sampler, pairing="reverse", fold=True)
  eager = fn(jax.random.key(5), x, y)
  jitted = jax.jit(fn)(jax.random.key(5), x, y)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_errors():
  x, y = _batch(4)
  key, sampler = jax.random.key(0), samplers.uniform()
  with pytest.raises(ValueError, match="Batch size mismatch"):
    mixing.mix(key, x, y[:3], sampler)
  with pytest.raises(ValueError, match="'example', 'batch'"):
    mixing.mix(key, x, y, sampler, granularity="pixel")
  with pytest.raises(ValueError, match="'permutation', 'reverse'"):
    mixing.mix(key, x, y, sampler, pairing="random")
  with pytest.raises(ValueError, match="one_hot"):
    mixing.mix(key, x, np.array([0, 1, 2, 0]), sampler)
  with pytest.raises(ValueError, match=r"\(B, c\)"):
    mixing.mix(key, x, y[:, :, None], sampler)
