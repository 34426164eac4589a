"""Tests for mixjax.mixing.mix: NumPy reference given the returned draw, pairing, λ law,
mask laws (docs/THEORY.md §8)."""
from __future__ import annotations

import dataclasses

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


# ---------------------------------------------------------------------------
# Mask laws (docs/THEORY.md §8): one code path with the λ-laws.
# ---------------------------------------------------------------------------
MASK_LAWS = {
    "cutmix": samplers.cutmix(1.0),
    "gmix": samplers.gmix(0.5),
    "switch": samplers.switch(samplers.beta(0.8), samplers.cutmix(1.0), 0.5),
}


def _np_mask_mix(x, y, mask, partner):
  """NumPy float64 mixing from the returned per-pixel mask (B, H, W)."""
  x, y, mask = (np.asarray(a, np.float64) for a in (x, y, mask))
  m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
  x_mix = np.stack([m[i] * x[i] + (1 - m[i]) * x[p] for i, p in enumerate(partner)])
  lam = mask.reshape(len(mask), -1).mean(1)
  y_mix = np.stack([lam[i] * y[i] + (1 - lam[i]) * y[p] for i, p in enumerate(partner)])
  return x_mix, y_mix, lam


@pytest.mark.parametrize("law", list(MASK_LAWS))
@pytest.mark.parametrize("trailing", [(6, 5, 3), (4, 7)])
@pytest.mark.parametrize("granularity,fold", [("example", False), ("example", True),
                                              ("batch", False)])
def test_mask_mix_matches_numpy(law, trailing, granularity, fold):
  x, y = _batch(7, trailing)  # an odd batch (timm asserts an even one)
  out = jax.jit(lambda k: mixing.mix(k, x, y, MASK_LAWS[law], granularity=granularity,
                                     pairing="permutation", fold=fold))(jax.random.key(2))
  hw = trailing[:2]
  assert out.mask.shape == (7,) + hw + ((1,) if len(trailing) == 3 else ())
  mask = np.asarray(out.mask).reshape((7,) + hw)
  assert np.all((mask >= 0) & (mask <= 1))
  ref_x, ref_y, ref_lam = _np_mask_mix(x, y, mask, np.asarray(out.partner))
  np.testing.assert_allclose(out.x, ref_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.y, ref_y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.lam, ref_lam, rtol=1e-5, atol=1e-6)  # λ = mean(M)
  if fold:
    assert np.all(np.asarray(out.lam) >= 0.5)
  if granularity == "batch":
    np.testing.assert_array_equal(mask, np.broadcast_to(mask[:1], mask.shape))
  if law == "cutmix":  # box masks are binary
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_mask_law_draws_the_unfolded_box_and_fold_swaps_the_roles():
  x, y = _batch(64, (8, 8, 1))
  law = samplers.cutmix(1.0)
  plain = mixing.mix(jax.random.key(5), x, y, law)
  folded = mixing.mix(jax.random.key(5), x, y, law, fold=True)
  flip = np.asarray(plain.lam) < 0.5
  assert flip.any() and (~flip).any()
  np.testing.assert_array_equal(np.asarray(folded.mask)[flip], 1 - np.asarray(plain.mask)[flip])
  np.testing.assert_array_equal(np.asarray(folded.mask)[~flip], np.asarray(plain.mask)[~flip])


@dataclasses.dataclass(frozen=True, repr=False)
class _ConstantMasks(samplers.MaskLaw):
  """A mask law whose masks are the constant λ·1 of Beta(0.4) (Sampler.masks)."""

  def _masks(self, key, batch_size, hw):
    return samplers.beta(0.4).masks(key, batch_size, hw)


@pytest.mark.parametrize("fold", [False, True])
def test_a_constant_mask_mixes_as_mixup_for_the_same_draw(fold):
  x, y = _batch(9, (5, 4, 2))
  key = jax.random.key(8)
  as_mask = mixing.mix(key, x, y, _ConstantMasks(), fold=fold)
  as_lam = mixing.mix(key, x, y, samplers.beta(0.4), fold=fold)
  np.testing.assert_array_equal(as_mask.lam, as_lam.lam)
  np.testing.assert_array_equal(as_mask.partner, as_lam.partner)
  np.testing.assert_allclose(as_mask.x, as_lam.x, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(as_mask.y, as_lam.y, rtol=1e-6, atol=1e-7)
  assert as_lam.mask.shape == (9, 1, 1, 1)  # a λ-law's mask stays the broadcast λ
  np.testing.assert_array_equal(as_lam.mask.ravel(), as_lam.lam)


def test_mask_law_on_inputs_that_are_not_images_says_what_to_use():
  x, y = _batch(4, (10,))
  with pytest.raises(ValueError, match=r"CutMix\(1\) needs image inputs \(B, H, W\[, C\]\); "
                                       r"got per-example shape \(10,\).*beta\(1.0\)"):
    mixing.mix(jax.random.key(0), x, y, samplers.cutmix(1.0))


def test_stacked_cutmix_laws_mix_as_each_alone():
  x, y = _batch(5, (6, 6, 1))
  laws = [samplers.cutmix(a) for a in (0.2, 1.0, 3.0)]
  keys = jax.random.split(jax.random.key(1), len(laws))
  out = jax.jit(jax.vmap(lambda s, k: mixing.mix(k, x, y, s)))(samplers.stack(laws), keys)
  for i, law in enumerate(laws):
    alone = mixing.mix(keys[i], x, y, law)
    for a, b in zip(alone, out):
      np.testing.assert_allclose(b[i], a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("law", ["cutmix", "switch"])
def test_mask_draws_under_shard_map_per_device_and_global(law):
  """Per device: each device mixes its local rows with fold_in(key, device), as a
  one-device replay does. Global: all-gathered rows mixed with the shared key, then each
  device's rows, equal to one mix of the global batch (the trainer's draw_mix pattern)."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  sampler = MASK_LAWS[law]
  num_dev = 4
  mesh = jax.make_mesh((num_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x, y = _batch(4 * 3, (5, 6, 2))  # 3 rows per device: odd local batches
  key = jax.random.key(6)

  def per_device(xl, yl):
    dev = jax.lax.axis_index("data")
    return mixing.mix(jax.random.fold_in(key, dev), xl, yl, sampler)

  def global_draw(xl, yl):
    dev = jax.lax.axis_index("data")
    xg = jax.lax.all_gather(xl, "data", tiled=True)
    yg = jax.lax.all_gather(yl, "data", tiled=True)
    rows = lambda a: jax.lax.dynamic_slice_in_dim(a, dev * xl.shape[0], xl.shape[0])
    return jax.tree.map(rows, mixing.mix(key, xg, yg, sampler))

  for body in (per_device, global_draw):
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P("data")),
                               out_specs=P("data")))
    got = fn(x, y)
    if body is global_draw:
      want = mixing.mix(key, x, y, sampler)
    else:
      parts = [mixing.mix(jax.random.fold_in(key, d), x[3 * d:3 * d + 3], y[3 * d:3 * d + 3],
                          sampler) for d in range(num_dev)]
      want = jax.tree.map(lambda *a: np.concatenate(a), *parts)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
