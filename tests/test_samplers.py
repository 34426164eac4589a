"""Tests for mixjax.samplers against independent references.

References: docs/THEORY.md §6's table, closed forms (1/27, ½ + 1/π, ...), scipy.integrate.quad
of the folded scipy.stats.beta density, scipy.stats KS tests on draws, binomial
tolerances, scipy.optimize for the Beta-family optimum.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate, optimize, special, stats
from scipy import stats as sp_stats

from mixjax import mixing
from mixjax import samplers
from mixjax import samplers as L  # the studies' alias, in the tests moved from there
from mixjax import samplers as S

KS_PVALUE = 1e-3


# ---------------------------------------------------------------------------
# Independent references.
# ---------------------------------------------------------------------------
def folded_beta_moment(a, b, k, *, algebraic=True):
  """E θ^k, θ = max(λ, 1−λ), λ ~ Beta(a, b), by SciPy quadrature of the θ-density.

  algebraic=True integrates the (1−θ)^(c−1) endpoint factor with QUADPACK's QAWS rule
  ('alg' weight), accurate to ~1e-13 also for a, b < 1.
  """
  if not algebraic:
    pdf = stats.beta(a, b).pdf
    return integrate.quad(lambda t: t**k * (pdf(t) + pdf(1.0 - t)), 0.5, 1.0,
                          epsabs=1e-11, epsrel=1e-10, limit=400)[0]
  norm = special.beta(a, b)
  # p(θ) = θ^(a−1)(1−θ)^(b−1)/B and p(1−θ) = θ^(b−1)(1−θ)^(a−1)/B.
  r1 = integrate.quad(lambda t: t**(k + a - 1.0), 0.5, 1.0, weight="alg",
                      wvar=(0.0, b - 1.0), epsabs=1e-14, epsrel=1e-12, limit=200)[0]
  r2 = integrate.quad(lambda t: t**(k + b - 1.0), 0.5, 1.0, weight="alg",
                      wvar=(0.0, a - 1.0), epsabs=1e-14, epsrel=1e-12, limit=200)[0]
  return (r1 + r2) / norm


def shifted_beta_moment(a, b, k):
  """E θ^k for θ = ½ + X/2, X ~ Beta(a, b), by QAWS quadrature of 2 p_X(2θ − 1)."""
  # 2 p_X(2θ−1) = 2^(a+b−1) (θ−½)^(a−1) (1−θ)^(b−1) / B(a, b).
  val = integrate.quad(lambda t: t**k, 0.5, 1.0, weight="alg", wvar=(a - 1.0, b - 1.0),
                       epsabs=1e-15, epsrel=1e-14, limit=200)[0]
  return val * 2.0 ** (a + b - 1.0) / special.beta(a, b)


def beta_strength_closed_form(alpha):
  """σ²/θ̄² of the folded Beta(α, α) from docs/THEORY.md §6 (written out independently)."""
  e_abs = math.exp(math.lgamma(2 * alpha) - math.log(alpha) - alpha * math.log(4.0)
                   - 2 * math.lgamma(alpha))
  mean = 0.5 + e_abs
  return (1.0 / (4.0 * (2.0 * alpha + 1.0)) - e_abs**2) / mean**2


def ks_pvalue(sample, cdf):
  """KS p-value of float32 draws against the law F rounded to float32.

  float32 cannot resolve 1 − λ below ~6e-8, so for small α a few percent of Beta draws
  round to exactly 1.0. The KS distance is taken against G(x) = F(upper rounding
  boundary of x) at each distinct draw x (and its left limit), the CDF of the rounded
  law; the continuous Kolmogorov p-value is then conservative.
  """
  x = np.asarray(sample, np.float32)
  n = x.size
  u, counts = np.unique(x, return_counts=True)
  ecdf = np.cumsum(counts) / n
  up = np.nextafter(u, np.float32(np.inf)).astype(np.float64)
  down = np.nextafter(u, np.float32(-np.inf)).astype(np.float64)
  u64 = u.astype(np.float64)
  g_hi = np.where(u64 >= 1.0, 1.0, cdf(np.minimum((u64 + up) / 2, 1.0)))
  g_lo = np.where(u64 <= 0.0, 0.0, cdf(np.maximum((u64 + down) / 2, 0.0)))
  d = max(np.max(np.abs(ecdf - g_hi)), np.max(np.abs(ecdf - counts / n - g_lo)))
  return stats.kstwo.sf(d, n)


def draws(sampler, n, seed=0):
  """n draws of λ (float64 host copy) under jit."""
  lam = jax.jit(lambda k: sampler(k, (n,)))(jax.random.key(seed))
  assert lam.dtype == jnp.float32 and lam.shape == (n,)
  lam = np.asarray(lam, np.float64)
  assert np.all(np.isfinite(lam)) and lam.min() >= 0.0 and lam.max() <= 1.0
  return lam


def assert_mean_var_within_5se(theta, mean, var, mu4):
  """Sample mean/variance of θ within 5 standard errors of (mean, var).

  SE(mean) = √(σ²/n); SE(sample variance) = √((μ4 − σ⁴)/n), μ4 the central 4th moment.
  """
  n = theta.size
  assert abs(theta.mean() - mean) < 5 * math.sqrt(var / n)
  assert abs(theta.var() - var) < 5 * math.sqrt((mu4 - var**2) / n)


def central_mu4(raw):
  """Central 4th moment from raw moments raw[k] = E θ^k, k = 0..4."""
  m = raw[1]
  return raw[4] - 4 * m * raw[3] + 6 * m**2 * raw[2] - 3 * m**4


# ---------------------------------------------------------------------------
# Moments: docs/THEORY.md §6 table and quadrature of the folded density.
# ---------------------------------------------------------------------------
# (sampler, θ̄, σ², σ²/θ̄², γ²/θ̄²) as printed in docs/THEORY.md §6 (6 decimals or exact).
TABLE = [
    (S.beta(0.2), 0.898810, 0.019522, 0.024165, 0.036840),
    (S.beta(0.5), 0.5 + 1 / math.pi, 1 / 8 - 1 / math.pi**2, 0.035361, 0.084659),
    (S.beta(1.0), 0.75, 1 / 48, 1 / 27, 0.148148),
    (S.uniform(), 0.75, 1 / 48, 1 / 27, 0.148148),
    (S.beta(2.0), 0.6875, 0.014844, 0.031405, 0.238017),
    (S.beta(10.0), 0.588099, 0.004143, 0.011980, 0.502534),
    (S.w_shaped(0.5, 0.5), 0.75, 1 / 32, 1 / 18, 0.166667),
    (S.mixture([S.constant(1.0), S.constant(0.5)], [0.5, 0.5]), 0.75, 1 / 16, 1 / 9, 2 / 9),
    (S.regmixup(1e12, eta=1.0), 0.75, 1 / 16, 1 / 9, 2 / 9),
    (S.optimal(), 2 / 3, 1 / 18, 1 / 8, 0.375),
]


@pytest.mark.parametrize("row", TABLE, ids=lambda r: repr(r[0]))
def test_moments_match_theory_table(row):
  sampler, mean, var, strength, global_strength = row
  m = S.theta_moments(sampler)
  assert m.exact and m.stderr is None
  np.testing.assert_allclose(
      [m.mean, m.var, m.strength, m.global_strength], [mean, var, strength, global_strength],
      rtol=0, atol=1e-6)
  np.testing.assert_allclose(m.gamma2, m.var + (1 - m.mean) ** 2, rtol=1e-12)


@pytest.mark.parametrize("a,b", [(0.2, 0.2), (0.5, 0.5), (0.82, 0.82), (1, 1), (2, 2),
                                 (10, 10), (50, 50), (2, 5), (0.3, 3), (7, 0.5)])
def test_closed_forms_match_quadrature_of_folded_density(a, b):
  m = S.theta_moments(S.beta(a, b))
  m1 = folded_beta_moment(a, b, 1, algebraic=False)
  m2 = folded_beta_moment(a, b, 2, algebraic=False)
  np.testing.assert_allclose(m.mean, m1, rtol=0, atol=1e-9)
  np.testing.assert_allclose(m.var, m2 - m1**2, rtol=0, atol=1e-9)
  np.testing.assert_allclose(m.gamma2, 1 - 2 * m1 + m2, rtol=0, atol=1e-9)


def test_w_shaped_and_mixture_moments_against_quadrature():
  a, b = 0.3, 2.0
  ws = S.theta_moments(S.w_shaped(a, b))
  m1, m2 = shifted_beta_moment(a, b, 1), shifted_beta_moment(a, b, 2)
  np.testing.assert_allclose([ws.mean, ws.var], [m1, m2 - m1**2], atol=1e-10)
  # docs/THEORY.md §6: σ²/θ̄² = Var X / (1 + E X)² for θ = ½ + X/2.
  ex, vx = stats.beta(a, b).mean(), stats.beta(a, b).var()
  np.testing.assert_allclose(ws.strength, vx / (1 + ex) ** 2, rtol=1e-12)

  weights = [0.2, 0.5, 0.3]
  mix = S.mixture([S.beta(0.2), S.w_shaped(a, b), S.constant(0.3)], weights)
  raw1 = [folded_beta_moment(0.2, 0.2, 1), m1, 0.7]
  raw2 = [folded_beta_moment(0.2, 0.2, 2), m2, 0.49]
  mean, sq = np.dot(weights, raw1), np.dot(weights, raw2)
  mm = S.theta_moments(mix)
  np.testing.assert_allclose([mm.mean, mm.var], [mean, sq - mean**2], atol=1e-10)


def test_regmixup_law_is_atom_at_one_plus_folded_beta():
  alpha, eta = 0.4, 3.0
  m = S.theta_moments(S.regmixup(alpha, eta))
  p = 1 / (1 + eta)
  m1 = p + (1 - p) * folded_beta_moment(alpha, alpha, 1)
  m2 = p + (1 - p) * folded_beta_moment(alpha, alpha, 2)
  np.testing.assert_allclose([m.mean, m.var], [m1, m2 - m1**2], atol=1e-10)
  # η = 0 is plain ERM: θ = 1 surely.
  erm = S.theta_moments(S.regmixup(alpha, eta=0.0))
  assert erm.mean == 1.0 and erm.var == 0.0


# ---------------------------------------------------------------------------
# The optimum (Bhatia–Davis) and the Beta-family peak.
# ---------------------------------------------------------------------------
def test_bhatia_davis_optimum_reachable_and_equal_to_optimal():
  mix = S.mixture([S.constant(0.5), S.constant(1.0)], [2 / 3, 1 / 3])
  opt = S.optimal()
  assert mix == opt and hash(mix) == hash(opt)
  assert S.theta_moments(mix) == S.theta_moments(opt)
  np.testing.assert_allclose(S.theta_moments(opt).strength, 1 / 8, rtol=1e-14)
  # No law on [½, 1] beats 1/8 (Bhatia–Davis): random mixtures of built-ins stay below.
  rng = np.random.default_rng(0)
  for _ in range(20):
    w = rng.dirichlet(np.ones(3))
    lams = rng.uniform(0, 1, 2)
    law = S.mixture([S.constant(lams[0]), S.constant(lams[1]), S.beta(rng.uniform(0.1, 5))], w)
    assert S.theta_moments(law).strength <= 1 / 8 + 1e-12


def test_beta_family_strength_peaks_near_0_82():
  res = optimize.minimize_scalar(lambda a: -beta_strength_closed_form(a),
                                 bounds=(0.05, 10.0), method="bounded",
                                 options={"xatol": 1e-8})
  assert abs(res.x - 0.82) < 0.01
  assert abs(-res.fun - 0.0374) < 5e-5
  np.testing.assert_allclose(S.theta_moments(S.beta(res.x)).strength, -res.fun, rtol=1e-10)
  # The module agrees with the closed form across the family.
  for a in [0.05, 0.3, 0.82, 3.0, 40.0]:
    np.testing.assert_allclose(S.theta_moments(S.beta(a)).strength,
                               beta_strength_closed_form(a), rtol=1e-10)


# ---------------------------------------------------------------------------
# Draws.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [(0.2, 0.2), (1.0, 1.0), (10.0, 10.0), (2.0, 5.0)])
def test_beta_draws_ks_and_folded_moments(a, b):
  n = 20_000
  lam = draws(S.beta(a, b), n, seed=1)
  assert ks_pvalue(lam, stats.beta(a, b).cdf) > KS_PVALUE
  raw = [folded_beta_moment(a, b, k) for k in range(5)]
  assert_mean_var_within_5se(np.maximum(lam, 1 - lam), raw[1], raw[2] - raw[1] ** 2,
                             central_mu4(raw))


def test_small_alpha_has_no_nan():
  n = 2**12
  for a in [0.1, 0.01]:
    lam = draws(S.beta(a), n, seed=2)  # `draws` asserts finite and in [0, 1].
    # Mass piles at the ends: P(min(λ, 1−λ) < 1e-3) = 2 F(1e-3), within 5 binomial SE.
    p = 2 * stats.beta(a, a).cdf(1e-3)
    assert abs(np.mean(np.minimum(lam, 1 - lam) < 1e-3) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_w_shaped_draws():
  a, b, n = 0.5, 2.0, 20_000
  lam = draws(S.w_shaped(a, b), n, seed=3)
  theta = np.maximum(lam, 1 - lam)
  assert stats.kstest(2 * theta - 1, stats.beta(a, b).cdf).pvalue > KS_PVALUE
  # λ = θ or 1 − θ with probability ½.
  assert abs(np.mean(lam > 0.5) - 0.5) < 5 * math.sqrt(0.25 / n)
  raw = [shifted_beta_moment(a, b, k) for k in range(5)]
  assert_mean_var_within_5se(theta, raw[1], raw[2] - raw[1] ** 2, central_mu4(raw))


def test_regmixup_draws_atom_fraction():
  alpha, eta, n = 2.0, 3.0, 20_000
  lam = draws(S.regmixup(alpha, eta), n, seed=4)
  p = 1 / (1 + eta)
  atom = lam == 1.0
  assert abs(atom.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
  assert ks_pvalue(lam[~atom], stats.beta(alpha, alpha).cdf) > KS_PVALUE


def test_mixture_draws_ks():
  weights = [0.3, 0.7]
  mix = S.mixture([S.beta(0.5), S.beta(5.0, 2.0)], weights)
  lam = draws(mix, 20_000, seed=5)
  cdf = lambda x: weights[0] * stats.beta(0.5, 0.5).cdf(x) + weights[1] * stats.beta(5, 2).cdf(x)
  assert ks_pvalue(lam, cdf) > KS_PVALUE


def test_optimal_draws_fractions():
  n = 20_000
  lam = draws(S.optimal(), n, seed=6)
  assert set(np.unique(lam)) <= {0.5, 1.0}
  assert abs(np.mean(lam == 0.5) - 2 / 3) < 5 * math.sqrt(2 / 9 / n)


def test_sampler_is_static_friendly_and_vmappable():
  assert S.uniform() == S.beta(1.0) and hash(S.uniform()) == hash(S.beta(1.0))
  assert repr(S.beta(0.2)) == "beta(alpha=0.2)" and S.uniform().name == "uniform()"
  assert repr(S.regmixup(1.0, 2.0)) == "regmixup(alpha=1.0, eta=2.0)"
  assert "w_shaped(a=0.5, b=0.5)" in repr(S.mixture([S.w_shaped(0.5, 0.5)], [1.0]))

  traces = []

  def f(key, sampler):
    traces.append(sampler)
    return sampler(key, (4,))

  g = jax.jit(f, static_argnums=1)
  g(jax.random.key(0), S.beta(1.0))
  g(jax.random.key(1), S.uniform())  # Equal law: no retrace.
  assert len(traces) == 1
  keys = jax.random.split(jax.random.key(0), 3)
  out = jax.vmap(lambda k: S.mixture([S.constant(0.5), S.uniform()], [0.5, 0.5])(k, (2,)))(keys)
  assert out.shape == (3, 2) and out.dtype == jnp.float32
  assert S.constant(0.3)(jax.random.key(0)).shape == ()


def test_theta_law_structure():
  law = S.regmixup(0.4, eta=3.0).theta_law()
  assert law.components == (S.Atom(1.0), S.FoldedBeta(0.4, 0.4))
  np.testing.assert_allclose(law.weights, [0.25, 0.75])
  nested = S.mixture([S.optimal(), S.w_shaped(1.0, 2.0)], [0.5, 0.5]).theta_law()
  assert nested.components == (S.Atom(0.5), S.Atom(1.0), S.ShiftedBeta(1.0, 2.0))
  np.testing.assert_allclose(nested.weights, [1 / 3, 1 / 6, 1 / 2])
  assert S.constant(0.2).theta_law().components == (S.Atom(0.8),)
  assert not S.from_fn(lambda k, s: jnp.zeros(s)).theta_law().is_known


# ---------------------------------------------------------------------------
# Quadrature.
# ---------------------------------------------------------------------------
def check_rule(nodes, weights):
  assert nodes.dtype == np.float64 and weights.dtype == np.float64
  assert nodes.min() >= 0.5 and nodes.max() <= 1.0
  assert np.all(weights >= 0) and abs(weights.sum() - 1) < 1e-14


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 10.0])
def test_quadrature_exact_for_polynomials(alpha):
  for n in [1, 3, 8]:
    nodes, weights = S.theta_quadrature(S.beta(alpha), n)
    check_rule(nodes, weights)
    assert nodes.size == n
    for k in range(2 * n):
      assert abs(weights @ nodes**k - folded_beta_moment(alpha, alpha, k)) < 1e-10, (n, k)


def test_quadrature_asymmetric_and_w_shaped_exact():
  n = 5
  for a, b in [(0.3, 3.0), (4.0, 0.6)]:
    nodes, weights = S.theta_quadrature(S.beta(a, b), n)
    check_rule(nodes, weights)
    for k in range(2 * n):
      assert abs(weights @ nodes**k - folded_beta_moment(a, b, k)) < 1e-10
  nodes, weights = S.theta_quadrature(S.w_shaped(0.5, 0.5), n)
  check_rule(nodes, weights)
  for k in range(2 * n):
    assert abs(weights @ nodes**k - shifted_beta_moment(0.5, 0.5, k)) < 1e-10


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_quadrature_converges_for_smooth_function(alpha):
  g = lambda t: np.exp(-3.0 * t) * np.cos(7.0 * t)
  pdf = stats.beta(alpha, alpha).pdf
  if alpha < 1:
    ref = 2 * integrate.quad(lambda t: g(t) * t**(alpha - 1), 0.5, 1.0, weight="alg",
                             wvar=(0.0, alpha - 1), epsabs=1e-15)[0] / special.beta(alpha, alpha)
  else:
    ref = integrate.quad(lambda t: g(t) * 2 * pdf(t), 0.5, 1.0, epsabs=1e-15)[0]
  errors = []
  for n in [1, 2, 4, 8]:
    nodes, weights = S.theta_quadrature(S.beta(alpha), n)
    errors.append(abs(weights @ g(nodes) - ref))
  assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-12


def test_quadrature_atoms_and_mixtures():
  nodes, weights = S.theta_quadrature(S.optimal(), 7)
  np.testing.assert_allclose(nodes, [0.5, 1.0])
  np.testing.assert_allclose(weights, [2 / 3, 1 / 3])

  eta, alpha, n = 1.5, 0.2, 4
  nodes, weights = S.theta_quadrature(S.regmixup(alpha, eta), n)
  check_rule(nodes, weights)
  assert nodes.size == n + 1 and nodes[-1] == 1.0
  p = 1 / (1 + eta)
  assert weights[-1] >= p  # The atom (plus the rule's own node mass near 1, if any).
  for k in range(2 * n):
    ref = p + (1 - p) * folded_beta_moment(alpha, alpha, k)
    assert abs(weights @ nodes**k - ref) < 1e-10

  w = [0.25, 0.25, 0.5]
  mix = S.mixture([S.beta(0.5), S.w_shaped(2.0, 0.5), S.constant(0.2)], w)
  nodes, weights = S.theta_quadrature(mix, n)
  check_rule(nodes, weights)
  for k in range(2 * n):
    ref = (w[0] * folded_beta_moment(0.5, 0.5, k) + w[1] * shifted_beta_moment(2.0, 0.5, k)
           + w[2] * 0.8**k)
    assert abs(weights @ nodes**k - ref) < 1e-10


def test_quadrature_large_alpha_matches_moments():
  for alpha in [1e3, 1e6]:
    m = S.theta_moments(S.beta(alpha))
    nodes, weights = S.theta_quadrature(S.beta(alpha), 3)
    check_rule(nodes, weights)
    mean = weights @ nodes
    np.testing.assert_allclose(mean, m.mean, atol=1e-13)
    np.testing.assert_allclose(weights @ (nodes - mean) ** 2, m.var, rtol=1e-8)


# ---------------------------------------------------------------------------
# from_fn.
# ---------------------------------------------------------------------------
def test_from_fn_estimate_within_its_standard_errors():
  fn = lambda key, shape: jax.random.beta(key, 2.0, 2.0, shape)
  est = S.theta_moments(S.from_fn(fn), num_draws=2**17)
  exact = S.theta_moments(S.beta(2.0))
  assert not est.exact and est.stderr.num_draws == 2**17
  assert "estimate" in repr(est)
  for field in ["mean", "var", "strength", "global_strength"]:
    se = getattr(est.stderr, field)
    assert 0 < se < 1e-2
    assert abs(getattr(est, field) - getattr(exact, field)) < 5 * se, field
  # The mean's standard error is √(σ²/n).
  np.testing.assert_allclose(est.stderr.mean, math.sqrt(exact.var / 2**17), rtol=0.05)


def test_from_fn_out_of_range_raises():
  bad = S.from_fn(lambda key, shape: 2.0 * jax.random.uniform(key, shape), name="bad")
  with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
    S.theta_moments(bad, num_draws=1024)
  with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
    bad(jax.random.key(0), (64,))  # Eager call.
  with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
    S.validate(bad)  # Draws under jit, checks on the host.
  nan = S.from_fn(lambda key, shape: jnp.full(shape, jnp.nan))
  with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
    S.validate(nan)
  wrong_shape = S.from_fn(lambda key, shape: jax.random.uniform(key, (3,)))
  with pytest.raises(ValueError, match="must return exactly `shape`"):
    wrong_shape(jax.random.key(0), (5,))
  good = S.from_fn(lambda key, shape: jax.random.uniform(key, shape))
  assert S.validate(good) is good


def test_from_fn_quadrature():
  fn = S.from_fn(lambda key, shape: jax.random.uniform(key, shape), name="unif")
  with pytest.raises(ValueError, match="unknown θ-law"):
    S.theta_quadrature(fn, 4)
  num_draws = 2**14
  nodes, weights = S.theta_quadrature(fn, 4, empirical=True, num_draws=num_draws)
  check_rule(nodes, weights)
  # θ ~ U[½, 1]: mean ¾, variance 1/48; the empirical rule reproduces the sample mean.
  assert abs(weights @ nodes - 0.75) < 5 * math.sqrt(1 / 48 / num_draws)


def _truncnorm(mu, sigma):
  """θ ~ Normal(mu, sigma²) truncated to [½, 1], by scipy.stats (the reference of the
  user law `trunc_normal` of the `user_law_dir` fixture, whose moments are hand-written)."""
  return stats.truncnorm((0.5 - mu) / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma)


@pytest.mark.parametrize("mu,sigma", [(0.75, 0.1), (0.9, 0.3), (0.55, 0.05)])
def test_user_law_with_given_moments_is_exact_and_matches_scipy(user_law_dir, mu, sigma):
  """A law from a .py file outside the repository (`make_sampler("DIR/mylaw.py:
  trunc_normal", ...)`) reports the moments its factory computed (exact, no standard
  error), equal to scipy.stats.truncnorm's; its θ draws follow that law (KS)."""
  law = S.make_sampler(f"{user_law_dir}/mylaw.py:trunc_normal", mu=mu, sigma=sigma)
  m = S.theta_moments(law)
  ref = _truncnorm(mu, sigma)
  mean, var = float(ref.mean()), float(ref.var())
  gamma2 = var + (1.0 - mean) ** 2
  assert m.exact and m.stderr is None and "exact" in repr(m)
  np.testing.assert_allclose(
      [m.mean, m.var, m.gamma2, m.strength, m.global_strength],
      [mean, var, gamma2, var / mean**2, gamma2 / mean**2], rtol=1e-9)
  lam = np.asarray(law(jax.random.key(1), (4096,)))
  assert stats.kstest(np.maximum(lam, 1.0 - lam), ref.cdf).pvalue > KS_PVALUE
  assert S.validate(law) is law  # the given moments agree with 2^16 draws
  assert law.label == f"trunc_normal({mu:g},{sigma:g})"
  # In a mixture the exact moments combine by the law of total variance.
  mix = S.theta_moments(S.mixture([law, S.constant(1.0)], [0.25, 0.75]))
  assert mix.exact
  np.testing.assert_allclose(mix.mean, 0.25 * mean + 0.75, rtol=1e-12)
  np.testing.assert_allclose(
      mix.var, 0.25 * (var + mean**2) + 0.75 - (0.25 * mean + 0.75) ** 2, rtol=1e-9)


def test_user_law_without_moments_is_monte_carlo_with_standard_errors(user_law_dir):
  """The same law without given moments: a Monte-Carlo estimate (`exact` False) within
  5 standard errors of scipy's values, its standard errors shown in its repr."""
  law = S.make_sampler(f"{user_law_dir}/mylaw.py:trunc_normal_mc", mu=0.8, sigma=0.1)
  m = S.theta_moments(law, num_draws=2**17)
  ref = _truncnorm(0.8, 0.1)
  assert not m.exact and m.stderr.num_draws == 2**17
  assert f"mean={m.mean:.6g}±{m.stderr.mean:.2g}" in repr(m)
  assert abs(m.mean - ref.mean()) < 5 * m.stderr.mean
  assert abs(m.var - ref.var()) < 5 * m.stderr.var
  # √(σ²/n): the mean's standard error.
  np.testing.assert_allclose(m.stderr.mean, math.sqrt(ref.var() / 2**17), rtol=0.05)


def test_from_fn_with_the_folded_beta_moments_by_quadrature():
  """A Beta(2, 3) law written by hand with its θ-moments from SciPy quadrature of the
  folded density: `theta_moments` returns them exactly, equal to the built-in Beta's."""
  m1, m2 = folded_beta_moment(2.0, 3.0, 1), folded_beta_moment(2.0, 3.0, 2)
  law = S.from_fn(lambda key, shape: jax.random.beta(key, 2.0, 3.0, shape), "beta23",
                  theta_mean=m1, theta_var=m2 - m1 * m1)
  got, builtin = S.theta_moments(law), S.theta_moments(S.beta(2.0, 3.0))
  assert got.exact
  np.testing.assert_allclose([got.mean, got.var], [builtin.mean, builtin.var], rtol=1e-10)
  assert S.validate(law) is law


def test_given_moments_are_checked(user_law_dir):
  """Impossible moments fail at construction (θ̄ outside [½, 1], σ² beyond the
  Bhatia–Davis bound, one without the other); possible but wrong ones (λ's moments given
  for θ's) fail `validate` against the draws."""
  draw = lambda key, shape: jax.random.uniform(key, shape)
  with pytest.raises(ValueError, match=r"must lie in \[0.5, 1\].*not the mean of λ"):
    S.from_fn(draw, theta_mean=0.5 - 1e-3, theta_var=0.0)
  with pytest.raises(ValueError, match="Bhatia–Davis|θ̄ − ½"):
    S.from_fn(draw, theta_mean=0.75, theta_var=0.0626)  # bound: ¼·¼ = 0.0625
  with pytest.raises(ValueError, match="give both"):
    S.from_fn(draw, theta_mean=0.75)
  with pytest.raises(ValueError, match="must be a finite number"):
    S.from_fn(draw, params={"n": "three"})
  good = S.from_fn(draw, theta_mean=0.75, theta_var=1.0 / 48.0)  # U[0, 1]: θ ~ U[½, 1]
  assert S.validate(good) is good and S.theta_moments(good).exact
  wrong = S.make_sampler(f"{user_law_dir}/mylaw.py:wrong_moments", mu=0.8, sigma=0.1)
  with pytest.raises(ValueError, match="do not match its draws"):
    S.validate(wrong)


def test_user_laws_of_one_factory_stack_and_vmap_like_builtin_laws(user_law_dir):
  """Laws of one factory differ only in their leaves: one structure, `stack`ed into one
  sampler whose vmapped draws are each law's own; the file is loaded once, so building
  a law twice gives equal laws (the trainer rebuilds it from the config). Given moments
  change the structure (they are leaves), as a mixture's components do."""
  name = f"{user_law_dir}/mylaw.py:trunc_normal"
  laws = [S.make_sampler(name, mu=mu, sigma=sd) for mu, sd in ((0.7, 0.1), (0.9, 0.2))]
  assert laws[0] == S.make_sampler(name, mu=0.7, sigma=0.1) and laws[0] != laws[1]
  assert S.structure(laws[0]) == S.structure(laws[1])
  mc = S.make_sampler(f"{user_law_dir}/mylaw.py:trunc_normal_mc", mu=0.7, sigma=0.1)
  assert S.structure(mc) != S.structure(laws[0])
  stacked = S.stack(laws)
  keys = jax.random.split(jax.random.key(3), 2)
  draws = jax.jit(jax.vmap(lambda law, k: law(k, (256,))))(stacked, keys)
  assert draws.shape == (2, 256) and draws.dtype == jnp.float32
  for i, law in enumerate(laws):
    np.testing.assert_allclose(draws[i], law(keys[i], (256,)), atol=2e-6)  # float32 erfinv
  moments = S.stack_moments(laws)
  np.testing.assert_allclose(moments.mean, [_truncnorm(0.7, 0.1).mean(),
                                            _truncnorm(0.9, 0.2).mean()], rtol=1e-6)


def test_validate_checks_mask_laws():
  """`validate` draws a mask law's masks: the built-in ones pass."""
  for law in (S.cutmix(1.0), S.gmix(0.5), S.switch(S.beta(1.0), S.cutmix(1.0), 0.5)):
    assert S.validate(law, shape=(32,)) is law


# ---------------------------------------------------------------------------
# Laws as the studies use them: moments, draws against SciPy, vmapping.
# ---------------------------------------------------------------------------


def test_theory_table_values_and_exact_constants():
  # docs/THEORY.md §6 (exact values quoted there to 6 digits).
  table = {"Beta(0.2)": (0.898810, 0.019522), "Beta(10)": (0.588099, 0.004143),
           "W(0.5)": (0.75, 1 / 32), "optimal": (2 / 3, 1 / 18)}
  for law in (L.beta(0.2), L.beta(10.0), L.w_shaped(0.5), L.optimal()):
    m = L.theta_moments(law)
    assert m.mean == pytest.approx(table[law.label][0], abs=1e-6)
    assert m.var == pytest.approx(table[law.label][1], abs=1e-6)
  assert L.theta_moments(L.optimal()).strength == pytest.approx(1 / 8, rel=1e-12)
  assert L.theta_moments(L.beta(0.5)).mean == pytest.approx(0.5 + 1 / math.pi, rel=1e-12)


def _theta_cdf(law: L.Sampler):
  """Exact CDF of θ for continuous laws, from scipy.stats."""
  (comp,) = law.theta_law().components
  if isinstance(comp, samplers.FoldedBeta):  # P(θ ≤ t) = P(1 − t ≤ λ ≤ t), λ ~ Beta(α, α).
    a = comp.b
    return lambda t: sp_stats.beta.cdf(t, a, a) - sp_stats.beta.cdf(1 - t, a, a)
  return lambda t: sp_stats.beta.cdf(2 * t - 1, comp.a, comp.b)  # θ = ½ + X/2.


_KS_N = 20000
# Critical value of the KS statistic at level 1e-4: sqrt(−ln(α/2)/2)/√n (asymptotic).
_KS_CRIT_1 = math.sqrt(-math.log(0.5e-4) / 2) / math.sqrt(_KS_N)


@pytest.mark.parametrize("law", [L.beta(0.1), L.beta(1.0), L.beta(10.0), L.w_shaped(0.5),
                                 L.w_shaped(0.3, 0.6)], ids=lambda l: l.label)
def test_draws_in_distribution(law):
  """θ = max(λ, 1 − λ) of the sampler's draws against the exact θ-CDF (scipy.stats),
  one-sample KS at level 1e-4; λ is symmetric about ½."""
  lam = np.asarray(law(jax.random.key(7), (_KS_N,)), np.float64)
  theta = np.maximum(lam, 1 - lam)
  assert theta.min() >= 0.5 and theta.max() <= 1.0
  # The sup is taken over draws below 1 − 1e-6: float32 cannot resolve θ within 6e-8
  # of 1 (for α = 0.1 about 19% of the mass lies there and is rounded to exactly 1),
  # which a sup over a subset of points ignores.
  xs = np.sort(theta)
  ecdf_hi = np.arange(1, _KS_N + 1) / _KS_N
  ecdf_lo = np.arange(0, _KS_N) / _KS_N
  ok = xs < 1 - 1e-6
  cdf = _theta_cdf(law)(xs[ok])
  d1 = max(np.max(np.abs(ecdf_hi[ok] - cdf)), np.max(np.abs(ecdf_lo[ok] - cdf)))
  assert d1 < _KS_CRIT_1, (d1, _KS_CRIT_1)
  frac_low = np.mean(lam < 0.5)
  assert abs(frac_low - 0.5) < 5 * math.sqrt(0.25 / _KS_N) + 1.0 / _KS_N


def test_atoms_and_mixture_weights():
  law = L.regmixup(math.inf, 2.0)  # θ = 1 w.p. 1/3, θ = ½ w.p. 2/3.
  lam = np.asarray(law(jax.random.key(1), (_KS_N,)))
  theta = np.maximum(lam, 1 - lam)
  assert set(np.unique(theta)) == {0.5, 1.0}
  p = np.mean(theta == 1.0)
  assert abs(p - 1 / 3) < 5 * math.sqrt((1 / 3) * (2 / 3) / _KS_N)
  # ERM is exactly λ = 1, so mixing leaves the batch as it is.
  x = jax.random.normal(jax.random.key(0), (64, 2))
  y = jax.nn.one_hot(jax.numpy.arange(64) % 4, 4)
  x_mix, y_mix, lam = mixing.mix(jax.random.key(1), x, y, L.erm(), fold=True)[:3]
  np.testing.assert_array_equal(np.asarray(lam), np.ones(64, np.float32))
  np.testing.assert_array_equal(np.asarray(x_mix), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(y_mix), np.asarray(y))


def test_bad_laws_are_refused():
  with pytest.raises(ValueError, match=r"\[½, 1\]"):
    L.atoms([0.2, 0.9])
  with pytest.raises(ValueError, match="Known samplers"):
    L.make_sampler("gamma")
  with pytest.raises(ValueError, match="cannot match"):
    L.matched_atoms(0.9, 0.05, 3)
  with pytest.raises(ValueError, match="different structures"):
    L.stack([L.beta(1.0), L.optimal()])
  assert L.structure(L.optimal()) == L.structure(L.matched_atoms(0.75, 1 / 48, 2))
  assert L.structure(L.beta(0.2)) != L.structure(L.w_shaped(0.2))


@pytest.mark.parametrize("laws", [
    [L.beta(0.2), L.beta(1.0), L.beta(5.0)],
    [L.w_shaped(0.3), L.w_shaped(0.5, 2.0)],
    [L.regmixup(1.0, 1.0), L.regmixup(4.0, 0.5), L.regmixup(0.2, 3.0)],
    [L.atoms([0.5, 1.0], [0.3, 0.7]), L.optimal()],
], ids=["beta", "w_shaped", "regmixup", "atoms"])
def test_samplers_vmap_over_their_numeric_parameters(laws):
  """A stack of same-structure samplers, vmapped, draws what each sampler draws alone
  with the same key (one compiled program for all of them)."""
  keys = jax.random.split(jax.random.key(3), len(laws))
  stacked = L.stack(laws)
  draws = jax.jit(jax.vmap(lambda s, k: s(k, (64,))))(stacked, keys)
  for law, k, d in zip(laws, keys, np.asarray(draws)):
    np.testing.assert_allclose(d, np.asarray(law(k, (64,))), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Registry and validation.
# ---------------------------------------------------------------------------
def test_make_sampler_by_name():
  assert S.make_sampler("beta", alpha=1.0) == S.beta(1.0)
  assert S.make_sampler("beta", alpha=2.0, beta=3.0) == S.beta(2.0, 3.0)
  assert S.make_sampler("optimal") == S.optimal()
  mix = S.make_sampler(
      "mixture", samplers=[("beta", {"alpha": 1.0}), ("constant", {"lam": 1.0})],
      weights=[0.5, 0.5])
  assert mix == S.mixture([S.beta(1.0), S.constant(1.0)], [0.5, 0.5])
  config = ml_collections.ConfigDict({"sampler": "w_shaped",
                                      "sampler_params": {"a": 0.5, "b": 0.5}})
  assert S.make_sampler(config.sampler, **config.sampler_params) == S.w_shaped(0.5, 0.5)
  assert {"beta", "uniform", "constant", "w_shaped", "mixture", "regmixup",
          "optimal", "from_fn"} <= set(S.SAMPLERS.names())


def test_unknown_names_and_params_raise():
  with pytest.raises(ValueError, match="Known samplers: .*beta"):
    S.make_sampler("betta", alpha=1.0)
  with pytest.raises(ValueError, match="takes parameters"):
    S.make_sampler("beta", gamma=1.0)
  with pytest.raises(ValueError, match="Known samplers"):
    S.mixture([("nope", {})], [1.0])


@pytest.mark.parametrize("make,match", [
    (lambda: S.beta(0.0), "alpha must be a finite number > 0"),
    (lambda: S.beta(-1.0), "alpha must be a finite number > 0"),
    (lambda: S.beta(float("nan")), "alpha must be a finite number > 0"),
    (lambda: S.beta(float("inf")), "alpha must be a finite number > 0"),
    (lambda: S.beta(1.0, 0.0), "beta must be a finite number > 0"),
    (lambda: S.w_shaped(0.0, 1.0), "a must be a finite number > 0"),
    (lambda: S.regmixup(0.0), "alpha must be a finite number > 0"),
    (lambda: S.regmixup(1.0, eta=-0.5), "eta must be a finite number ≥ 0"),
    (lambda: S.constant(1.5), r"lam must lie in \[0, 1\]"),
    (lambda: S.constant(-0.1), r"lam must lie in \[0, 1\]"),
    (lambda: S.constant(float("nan")), r"lam must lie in \[0, 1\]"),
    (lambda: S.mixture([], []), "at least one sampler"),
    (lambda: S.mixture([S.beta(1.0)], [0.5, 0.5]), "1 samplers but 2 weights"),
    (lambda: S.mixture([S.beta(1.0), S.beta(2.0)], [-0.5, 1.5]), "≥ 0"),
    (lambda: S.mixture([S.beta(1.0), S.beta(2.0)], [0.5, 0.6]), "must sum to 1"),
    (lambda: S.theta_quadrature(S.beta(1.0), 0), "num_nodes must be an integer ≥ 1"),
    (lambda: S.theta_quadrature(S.beta(1.0), 2.5), "num_nodes must be an integer ≥ 1"),
    (lambda: S.theta_moments("beta"), "Expected a Sampler"),
])
def test_bad_input_raises(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_mixture_weights_tolerance():
  # Within 1e-6 of 1 is accepted (and renormalized); beyond it is rejected.
  mix = S.mixture([S.beta(1.0), S.beta(2.0)], [0.5, 0.5 + 5e-7])
  assert abs(sum(mix.weights) - 1.0) < 1e-15
  with pytest.raises(ValueError, match="must sum to 1"):
    S.mixture([S.beta(1.0), S.beta(2.0)], [0.5, 0.5 + 5e-6])
