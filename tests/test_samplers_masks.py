"""Tests for the mask laws (mixjax/samplers/masks.py) and their moments (`mask_moments`,
`law_moments`, `mask_support`; docs/THEORY.md §8).

References: a NumPy reimplementation of timm's `rand_bbox` + `correct_lam` and of the
GMix reference code (naver-ai/hmix-gmix) given the same λ and centres; Monte Carlo over
the library's own draws with tolerances of 5 standard errors of the sample size; Lemma 2's
closed forms for constant masks; the mixture rule for a switch.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import samplers


def _np_rand_bbox(h, w, lam, cy, cx):
  """timm's rand_bbox (margin 0) and correct_lam, in float64 NumPy, one box."""
  ratio = np.sqrt(1.0 - lam)
  cut_h, cut_w = int(h * ratio), int(w * ratio)
  yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
  xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
  lam_corrected = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
  return (yl, yh, xl, xh), lam_corrected


@pytest.mark.parametrize("hw", [(28, 28), (3, 5), (7, 4), (1, 1)])
def test_cutmix_boxes_match_timm_given_lambda_and_centre(hw):
  h, w = hw
  rng = np.random.default_rng(0)
  n = 400
  lam = np.array(samplers.beta(0.7)(jax.random.key(1), (n,)))
  lam[:3] = [0.0, 1.0, 0.5]  # the full box, no box, and a half
  cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
  boxes = [np.asarray(b) for b in samplers.cutmix_boxes(lam, cy, cx, hw)]
  masks, lam_out = (np.asarray(a) for a in samplers.box_masks(boxes, hw))
  assert masks.shape == (n, h, w) and masks.dtype == np.float32
  for i in range(n):
    ref, ref_lam = _np_rand_bbox(h, w, float(lam[i]), int(cy[i]), int(cx[i]))
    assert tuple(int(b[i]) for b in boxes) == ref, (i, lam[i])
    np.testing.assert_allclose(lam_out[i], ref_lam, rtol=0, atol=1e-7)
    ref_mask = np.ones((h, w))
    ref_mask[ref[0]:ref[1], ref[2]:ref[3]] = 0.0  # pasted from the partner
    np.testing.assert_array_equal(masks[i], ref_mask)
    assert lam_out[i] == pytest.approx(ref_mask.mean(), abs=1e-7)


def test_cutmix_box_sides_near_lambda_zero_are_those_of_exact_arithmetic():
  # 0 < λ < 6e-8: 1 − λ rounds to 1 in float32; the side must stay ⌊H√(1−λ)⌋ = H − 1.
  lam = np.array([0.0, 1e-9, 3e-8, 1e-6], np.float32)
  yl, yh, _, _ = samplers.cutmix_boxes(lam, np.full(4, 4), np.full(4, 4), (8, 8))
  np.testing.assert_array_equal(np.asarray(yh - yl), [8, 6, 6, 6])  # cut 8 at λ = 0 only


def _np_gmix(h, w, lam, cy, cx):
  """naver-ai/hmix-gmix's gmix_gaussian_kernel and its use in Mixup._mix_batch, with the
  square image's img_h² generalized to H·W; the weight of the example's own pixels."""
  small = min(lam, 1.0 - lam)
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * math.pi / (small * h * w))
  mask = g if lam < 0.5 else 1.0 - g
  return mask, mask.mean()


@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_gaussian_masks_match_reference_code(hw):
  h, w = hw
  rng = np.random.default_rng(1)
  n = 64
  lam = rng.uniform(0.02, 0.98, n).astype(np.float32)
  cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
  masks, lam_out = (np.asarray(a) for a in samplers.gaussian_masks(lam, cy, cx, hw))
  for i in range(n):
    ref, ref_lam = _np_gmix(h, w, float(lam[i]), cy[i], cx[i])
    np.testing.assert_allclose(masks[i], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lam_out[i], ref_lam, rtol=1e-5)


def test_registry_labels_and_errors():
  law = samplers.make_sampler("cutmix", alpha=0.5)
  assert law == samplers.cutmix(0.5) and law.label == "CutMix(0.5)" and law.is_mask
  assert samplers.make_sampler("gmix", alpha=1.0).label == "GMix(1)"
  sw = samplers.make_sampler("switch", law_a=("beta", {"alpha": 0.8}),
                             law_b={"name": "cutmix", "alpha": 1.0}, p=0.5)
  assert sw == samplers.switch() and sw.label == "Switch(Beta(0.8),CutMix(1),p=0.5)"
  # Two λ-laws switch as a plain mixture; RegMixup with a mask law is a switch from 1.
  assert isinstance(samplers.switch(samplers.beta(1.0), samplers.uniform(), 0.3),
                    samplers.Mixture)
  reg = samplers.regmixup_equivalent(samplers.cutmix(1.0), 3.0)
  assert isinstance(reg, samplers.Switch) and reg.p == pytest.approx(0.75)
  assert "cutmix" in samplers.SAMPLERS and "gmix" in samplers.SAMPLERS
  with pytest.raises(ValueError, match="finite number > 0"):
    samplers.cutmix(-1.0)
  with pytest.raises(ValueError, match="probability"):
    samplers.switch(p=1.5)
  with pytest.raises(ValueError, match="switch"):
    samplers.mixture([samplers.cutmix(1.0), samplers.beta(1.0)], [0.5, 0.5])
  with pytest.raises(ValueError, match="mask law.*mix"):
    law(jax.random.key(0), (3,))
  with pytest.raises(ValueError, match="law_moments"):
    samplers.theta_moments(law)
  with pytest.raises(ValueError, match=r"image inputs \(B, H, W\[, C\]\).*beta\(1.0\)"):
    samplers.law_moments(law, (784,))
  with pytest.raises(ValueError, match="input shape"):
    samplers.law_moments(law)
  assert isinstance(samplers.law_moments(samplers.beta(1.0)), samplers.ThetaMoments)


@pytest.mark.parametrize("laws", [
    [samplers.cutmix(0.3), samplers.cutmix(1.0), samplers.cutmix(2.0)],
    [samplers.gmix(0.5), samplers.gmix(1.0)],
    [samplers.switch(samplers.beta(0.8), samplers.cutmix(1.0), 0.5),
     samplers.switch(samplers.beta(0.2), samplers.cutmix(0.5), 0.2)],
])
def test_stacked_mask_laws_draw_what_each_draws_alone(laws):
  assert len({samplers.structure(s) for s in laws}) == 1
  stacked = samplers.stack(laws)
  key = jax.random.key(4)
  m_all, l_all = jax.jit(jax.vmap(lambda s: s.masks(key, 9, (6, 5))))(stacked)
  for i, law in enumerate(laws):
    m, lam = law.masks(key, 9, (6, 5))
    np.testing.assert_allclose(m_all[i], m, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(l_all[i], lam, rtol=1e-6, atol=1e-7)


def test_laws_of_different_structures_do_not_stack():
  assert samplers.structure(samplers.cutmix(1.0)) != samplers.structure(samplers.gmix(1.0))
  with pytest.raises(ValueError, match="different structures"):
    samplers.stack([samplers.cutmix(1.0), samplers.gmix(1.0)])
  with pytest.raises(ValueError, match="different structures"):  # same fields, too
    samplers.stack([samplers.beta(1.0), samplers.w_shaped(1.0)])


def _mc_reference(law, hw, num_draws, seed=11):
  """Sample moments of the folded draws and their standard errors (per entry)."""
  m, lam = jax.jit(lambda k: law.masks(k, num_draws, hw))(jax.random.key(seed))
  m, lam = np.asarray(m, np.float64).reshape(num_draws, -1), np.asarray(lam, np.float64)
  flip = lam < 0.5
  n = np.where(flip[:, None], 1.0 - m, m)
  t = np.where(flip, 1.0 - lam, lam)
  nbar, tbar = n.mean(0), t.mean()
  nc, tc = n - nbar, t - tbar
  per = {
      "n_bar": n, "mean": t[:, None], "var": (tc**2)[:, None],
      "gamma2": ((1.0 - t) ** 2)[:, None],
      "c_mat": (nc[:, :, None] * nc[:, None, :]).reshape(num_draws, -1),
      "s_mat": ((1 - n)[:, :, None] * (1 - n)[:, None, :]).reshape(num_draws, -1),
      "c_vec": tc[:, None] * nc, "s_vec": (1.0 - t)[:, None] * (1.0 - n),
  }
  return {k: (v.mean(0), v.std(0) / np.sqrt(num_draws)) for k, v in per.items()}


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
def test_cutmix_moments_are_exact_against_monte_carlo(alpha, hw):
  """Every field of the exact moments within 5 standard errors of 2^16 draws (the
  library's own sampler, an independent code path from the exact enumeration)."""
  exact = samplers.mask_moments(samplers.cutmix(alpha), hw)
  assert exact.exact and exact.stderr is None
  assert exact.n_bar.shape == hw and exact.c_mat.shape == (hw[0] * hw[1],) * 2
  mc = _mc_reference(samplers.cutmix(alpha), hw, 2**16)
  for name, (value, se) in mc.items():
    got = np.ravel(getattr(exact, name))
    assert np.all(np.abs(got - value) <= 5 * se + 1e-9), name
  assert float(exact.mean) == pytest.approx(float(np.mean(exact.n_bar)), abs=1e-14)
  assert float(exact.strength) == pytest.approx(float(exact.var / exact.mean**2), rel=1e-14)


@pytest.mark.parametrize("hw", [(8, 8), (28, 28)])
def test_cutmix_shrinks_the_border_less(hw):
  """Clipped boxes paste over border pixels less often: N̄ is larger at a corner than at
  an edge's middle, and there than at the centre (on tiny grids folding can reverse it)."""
  n_bar = samplers.mask_moments(samplers.cutmix(1.0), hw).n_bar
  assert n_bar[0, 0] > n_bar[0, hw[1] // 2] > n_bar[hw[0] // 2, hw[1] // 2]


def test_constant_masks_reduce_to_lemma_2():
  """A λ-law as a constant mask N = θ·1: C_N = σ² 11ᵀ, S_N = γ² 11ᵀ, c_N = σ² 1,
  s_N = γ² 1 and N̄ = θ̄ (docs/THEORY.md §8), with Beta(1)'s θ̄ = 3/4, σ² = 1/48."""
  m = samplers.mask_moments(samplers.uniform(), (3, 4))
  sigma2, gamma2 = 1 / 48, 1 / 48 + 1 / 16
  np.testing.assert_allclose(m.n_bar, np.full((3, 4), 0.75), atol=1e-15)
  np.testing.assert_allclose(m.c_mat, np.full((12, 12), sigma2), atol=1e-15)
  np.testing.assert_allclose(m.s_mat, np.full((12, 12), gamma2), atol=1e-15)
  np.testing.assert_allclose(m.c_vec, np.full(12, sigma2), atol=1e-15)
  np.testing.assert_allclose(m.s_vec, np.full(12, gamma2), atol=1e-15)


def test_switch_moments_against_monte_carlo():
  law = samplers.switch(samplers.beta(0.5), samplers.cutmix(1.0), 0.3)
  exact = samplers.mask_moments(law, (4, 3))
  assert exact.exact
  for name, (value, se) in _mc_reference(law, (4, 3), 2**16).items():
    got = np.ravel(getattr(exact, name))
    assert np.all(np.abs(got - value) <= 5 * se + 1e-9), name


def test_gmix_moments_are_estimates_with_standard_errors():
  law = samplers.gmix(1.0)
  est = samplers.mask_moments(law, (6, 6), num_draws=2**14, seed=3)
  assert not est.exact and est.stderr.num_draws == 2**14
  ref = _mc_reference(law, (6, 6), 2**16, seed=12)  # independent draws
  for name in ("mean", "var", "n_bar"):
    value, se = ref[name]
    own = getattr(est.stderr, name)
    got = np.ravel(getattr(est, name))
    assert np.all(np.abs(got - value) <= 5 * np.sqrt(se**2 + own**2)), name
  assert est.stderr.mean == pytest.approx(ref["mean"][1][0] * 2.0, rel=0.1)  # 4x fewer draws


def test_mask_support_is_the_exact_law_of_cutmix():
  """The finite rule's weights sum to 1, and its moments are `mask_moments`'s."""
  law = samplers.cutmix(0.6)
  masks, weights = samplers.mask_support(law, (3, 4))
  assert masks.shape[1:] == (3, 4) and weights.sum() == pytest.approx(1.0, abs=1e-14)
  lam = masks.reshape(len(masks), -1).mean(1)
  n = np.where((lam < 0.5)[:, None], 1 - masks.reshape(len(masks), -1),
               masks.reshape(len(masks), -1))
  m = samplers.mask_moments(law, (3, 4))
  np.testing.assert_allclose(weights @ n, np.ravel(m.n_bar), atol=1e-14)
  nbar = weights @ n
  np.testing.assert_allclose((n - nbar).T @ ((n - nbar) * weights[:, None]), m.c_mat,
                             atol=1e-14)
  with pytest.raises(ValueError, match="no exact finite support"):
    samplers.mask_support(samplers.gmix(1.0), (3, 4))


def test_stack_moments_of_mask_laws():
  ms = [samplers.mask_moments(samplers.cutmix(a), (4, 4)) for a in (0.5, 1.0)]
  stacked = samplers.stack_moments(ms)
  assert isinstance(stacked, samplers.MaskMoments) and stacked.n_bar.shape == (2, 4, 4)
  np.testing.assert_allclose(stacked.c_mat[1], ms[1].c_mat, rtol=1e-6, atol=1e-7)
  one = jax.vmap(lambda m: m.mean)(stacked)
  np.testing.assert_allclose(one, [float(m.mean) for m in ms], rtol=1e-6)
  with pytest.raises(ValueError, match="θ-moments with mask moments"):
    samplers.stack_moments([ms[0], samplers.theta_moments(samplers.beta(1.0))])
  assert jnp.issubdtype(stacked.mean.dtype, jnp.floating)


def test_mask_moments_compare_and_hash_by_value():
  a = samplers.mask_moments(samplers.cutmix(1.0), (4, 4))
  b = jax.tree.map(np.copy, a)  # another object with the same values
  c = samplers.mask_moments(samplers.cutmix(0.5), (4, 4))
  assert a is not b and a == b and hash(a) == hash(b) and a != c
  assert a != samplers.theta_moments(samplers.beta(1.0))
  assert {a: 1}[b] == 1
