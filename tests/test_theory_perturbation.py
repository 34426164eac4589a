"""Tests for mixjax.theory.perturbation: Theorem 1 and Lemma 2 (docs/THEORY.md §2, §3).

References are independent of mixjax's quadrature and moments where it matters: SciPy
quadrature over λ of the original double sum, Gauss–Legendre over the folded Beta
density written here, exact enumeration of atoms and partners, and NumPy networks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from mixjax import samplers
from mixjax.theory import (data_stats, exact_mixup_risk, perturbation_covariances,
                           perturbed_erm_loss, sample_perturbations, transform)

N, D, C, HIDDEN = 8, 3, 4, 6


pytestmark = pytest.mark.usefixtures("x64")  # float64 for this module (conftest.py)


def _problem(seed=0, soft=True):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, D))
  y = rng.dirichlet(np.ones(C), size=N) if soft else np.eye(C)[rng.integers(0, C, N)]
  params = (rng.normal(size=(D, HIDDEN)), 0.3 * rng.normal(size=HIDDEN),
            rng.normal(size=(HIDDEN, C)) / 2, 0.3 * rng.normal(size=C))
  return x, y, params


def _np_net(params, x):
  w1, b1, w2, b2 = params
  return np.tanh(x @ w1 + b1) @ w2 + b2


def _jax_net(params):
  w1, b1, w2, b2 = (jnp.asarray(p) for p in params)
  return lambda x: jnp.tanh(x @ w1 + b1) @ w2 + b2


def _np_loss(name, y, u):
  if name == "squared":
    return np.sum((y - u) ** 2, axis=-1)
  m = u.max(-1, keepdims=True)
  log_s = u - m - np.log(np.sum(np.exp(u - m), -1, keepdims=True))
  return -np.sum(y * log_s, axis=-1)


def _np_mixup_pairs(params, x, y, lam, loss):
  """(1/n²) Σ_i Σ_j ℓ(λy_i + (1−λ)y_j, f(λx_i + (1−λ)x_j)): the original double sum."""
  xm = lam * x[:, None] + (1 - lam) * x[None, :]
  ym = lam * y[:, None] + (1 - lam) * y[None, :]
  return np.mean(_np_loss(loss, ym, _np_net(params, xm)))


def _folded_beta_rule(a, num=12):
  """Gauss–Legendre nodes/weights on [½, 1] for θ = max(λ, 1−λ), λ ~ Beta(a, a)."""
  t, w = np.polynomial.legendre.leggauss(num)
  theta = 0.75 + 0.25 * t
  w = 0.25 * w * 2 * scipy.stats.beta(a, a).pdf(theta)
  return theta, w


def test_transform_matches_definition():
  x, y, _ = _problem()
  x_img = x.reshape(N, 1, D)
  st = data_stats(x_img, y)
  x_t, y_t = transform(x_img, y, st, 0.7)
  assert x_t.shape == x_img.shape and y_t.shape == y.shape
  np.testing.assert_allclose(x_t.reshape(N, D), x.mean(0) + 0.7 * (x - x.mean(0)), rtol=1e-14)
  np.testing.assert_allclose(y_t, y.mean(0) + 0.7 * (y - y.mean(0)), rtol=1e-14)
  # The transformed inputs have covariance θ̄² Σ_xx; label smoothing keeps rows summing to 1.
  np.testing.assert_allclose(np.cov(np.asarray(x_t).reshape(N, D), rowvar=False, bias=True),
                             0.49 * np.cov(x, rowvar=False, bias=True), rtol=1e-12)
  np.testing.assert_allclose(np.sum(y_t, -1), 1.0, rtol=1e-14)
  with pytest.raises(ValueError, match="dimension"):
    transform(x[:, :2], y, st, 0.7)


def _perturbed_form(params, x, y, sampler, loss, num_nodes=32):
  """Theorem 1's right-hand side: θ-quadrature × exact sum over j, with mixjax's transform."""
  st = data_stats(x, y)
  theta_bar = samplers.theta_moments(sampler).mean
  x_t, y_t = (np.asarray(a) for a in transform(x, y, st, theta_bar))
  xc, yc = x - x.mean(0), y - y.mean(0)
  nodes, weights = samplers.theta_quadrature(sampler, num_nodes)
  total = 0.0
  for th, w in zip(nodes, weights):
    delta = (th - theta_bar) * xc[:, None] + (1 - th) * xc[None, :]  # [i, j]
    eps = (th - theta_bar) * yc[:, None] + (1 - th) * yc[None, :]
    u = _np_net(params, x_t[:, None] + delta)
    total += w * np.mean(_np_loss(loss, y_t[:, None] + eps, u))
  return total


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_theorem1_against_quad_over_lambda(loss):
  x, y, params = _problem(seed=1)
  sampler = samplers.beta(2.0)
  lam_law = scipy.stats.beta(2.0, 2.0)
  reference, _ = scipy.integrate.quad(
      lambda lam: lam_law.pdf(lam) * _np_mixup_pairs(params, x, y, lam, loss),
      0.0, 1.0, epsabs=1e-13, epsrel=1e-12, limit=200)
  exact = float(exact_mixup_risk(_jax_net(params), x, y, sampler, loss=loss))
  perturbed = _perturbed_form(params, x, y, sampler, loss)
  np.testing.assert_allclose(exact, reference, rtol=1e-6)
  np.testing.assert_allclose(perturbed, reference, rtol=1e-6)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_theorem1_atoms_enumerated(loss):
  # optimal(): θ = ½ w.p. 2/3 and θ = 1 w.p. 1/3. E^mix is a finite sum over λ = θ (§1).
  x, y, params = _problem(seed=2, soft=False)
  sampler = samplers.optimal()
  reference = (2 / 3) * _np_mixup_pairs(params, x, y, 0.5, loss) + (
      1 / 3) * _np_mixup_pairs(params, x, y, 1.0, loss)
  np.testing.assert_allclose(_perturbed_form(params, x, y, sampler, loss), reference, rtol=1e-6)
  np.testing.assert_allclose(
      float(exact_mixup_risk(_jax_net(params), x, y, sampler, loss=loss)), reference, rtol=1e-6)


def test_sample_perturbations_formula_and_shapes():
  x, y, _ = _problem(seed=3)
  x_img = x.reshape(N, D, 1)
  st = data_stats(x_img, y)
  pool_x, pool_y = x_img[:5], y[:5]
  sampler = samplers.beta(1.0)
  draw = sample_perturbations(jax.random.key(0), x_img, y, pool_x, pool_y, st, sampler)
  assert draw.delta.shape == x_img.shape and draw.eps.shape == y.shape
  theta, j = np.asarray(draw.theta), np.asarray(draw.partner)
  assert np.all((theta >= 0.5) & (theta <= 1.0)) and np.all((j >= 0) & (j < 5))
  tb = samplers.theta_moments(sampler).mean
  xc, yc = x - x.mean(0), y - y.mean(0)
  np.testing.assert_allclose(
      np.asarray(draw.delta).reshape(N, D),
      (theta - tb)[:, None] * xc + (1 - theta)[:, None] * xc[j], rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(
      draw.eps, (theta - tb)[:, None] * yc + (1 - theta)[:, None] * yc[j], rtol=1e-12,
      atol=1e-14)


def test_perturbed_erm_loss_is_unbiased_for_mixup_risk():
  x, y, params = _problem(seed=4)
  sampler = samplers.beta(1.0)
  st = data_stats(x, y)
  f = _jax_net(params)
  exact = float(exact_mixup_risk(f, x, y, sampler))
  keys = jax.random.split(jax.random.key(1), 2000)
  est = jax.jit(jax.vmap(lambda k: perturbed_erm_loss(k, f, x, y, sampler, st, num_draws=2)))(
      keys)
  est = np.asarray(est)
  stderr = est.std(ddof=1) / np.sqrt(len(est))
  assert abs(est.mean() - exact) < 5 * stderr, (est.mean(), exact, stderr)
  # num_draws averages independent draws: the variance drops accordingly (loose check).
  est8 = np.asarray(jax.jit(jax.vmap(
      lambda k: perturbed_erm_loss(k, f, x, y, sampler, st, num_draws=8)))(keys[:500]))
  assert est8.std() < est.std()


def _lemma2_enumerated(x, y, nodes, weights):
  """E δ_iδ_iᵀ, E δ_iε_iᵀ, E ε_iε_iᵀ for every i: quadrature over θ × exact sum over j."""
  theta_bar = float(np.dot(weights, nodes))
  xc, yc = x - x.mean(0), y - y.mean(0)
  exx = np.zeros((N, D, D))
  exy = np.zeros((N, D, C))
  eyy = np.zeros((N, C, C))
  for th, w in zip(nodes, weights):
    delta = (th - theta_bar) * xc[:, None] + (1 - th) * xc[None, :]  # (i, j, d)
    eps = (th - theta_bar) * yc[:, None] + (1 - th) * yc[None, :]
    exx += w * np.einsum("ija,ijb->iab", delta, delta) / N
    exy += w * np.einsum("ija,ijb->iab", delta, eps) / N
    eyy += w * np.einsum("ija,ijb->iab", eps, eps) / N
  return exx, exy, eyy


@pytest.mark.parametrize("law", ["beta2", "optimal"])
def test_lemma2_against_enumeration(law):
  x, y, _ = _problem(seed=5)
  if law == "beta2":
    sampler, (nodes, weights) = samplers.beta(2.0), _folded_beta_rule(2.0)
  else:
    sampler, nodes, weights = samplers.optimal(), np.array([0.5, 1.0]), np.array([2 / 3, 1 / 3])
  exx, exy, eyy = _lemma2_enumerated(x, y, nodes, weights)
  cov = perturbation_covariances(x, y, data_stats(x, y), samplers.theta_moments(sampler))
  for i in range(N):
    sxx, sxy, syy = cov.dense(i)
    np.testing.assert_allclose(sxx, exx[i], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sxy, exy[i], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(syy, eyy[i], rtol=1e-10, atol=1e-13)
  # Low-rank storage at full rank is the same object.
  cov_k = perturbation_covariances(x, y, data_stats(x, y, rank=D),
                                   samplers.theta_moments(sampler))
  np.testing.assert_allclose(cov_k.dense(3)[0], exx[3], rtol=1e-10, atol=1e-13)


def test_covariance_contractions_match_dense():
  x, y, _ = _problem(seed=6)
  rng = np.random.default_rng(7)
  moments = samplers.theta_moments(samplers.beta(0.5))
  a_shared = rng.normal(size=(D, D))
  a_each = rng.normal(size=(N, D, D))
  lin = rng.normal(size=(N, 2, D))
  b_each = rng.normal(size=(N, C, D))
  c_shared = rng.normal(size=(C, C))
  for rank in (None, D, 2):
    st = data_stats(x, y, rank=rank)
    cov = perturbation_covariances(x, y, st, moments)
    sxx, sxy, syy = (np.asarray(m) for m in jax.vmap(cov.dense)(jnp.arange(N)))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    close(cov.xx_trace(), np.trace(sxx, axis1=1, axis2=2))
    close(cov.xx_trace(2), np.trace(sxx[2]))
    close(cov.xx_quadratic(a_shared), np.einsum("ab,nba->n", a_shared, sxx))
    close(cov.xx_quadratic(a_each), np.einsum("nab,nba->n", a_each, sxx))
    close(cov.xx_sandwich(lin), np.einsum("nmd,nde,nke->nmk", lin, sxx, lin))
    close(cov.xx_sandwich(lin[0]), np.einsum("md,nde,ke->nmk", lin[0], sxx, lin[0]))
    close(cov.xy_apply(lin), np.einsum("nmd,ndc->nmc", lin, sxy))
    close(cov.xy_contract(b_each), np.einsum("ncd,ndc->n", b_each, sxy))
    close(cov.yy_quadratic(c_shared), np.einsum("ab,nba->n", c_shared, syy))
  # The rank-2 object keeps only the top-2 principal part of Σ̃_xx.
  vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
  top = (vecs[:, -2:] * vals[-2:]) @ vecs[:, -2:].T
  np.testing.assert_allclose(cov.shared_xx(), moments.mean**2 * top, rtol=1e-10, atol=1e-13)


def test_sampled_second_moments_match_lemma2():
  # Monte Carlo over (θ, j) from sample_perturbations vs Lemma 2, within 5 standard errors.
  x, y, _ = _problem(seed=8)
  sampler = samplers.beta(1.0)
  st = data_stats(x, y)
  keys = jax.random.split(jax.random.key(2), 20000)
  draws = jax.jit(jax.vmap(lambda k: sample_perturbations(k, x, y, x, y, st, sampler)))(keys)
  delta, eps = np.asarray(draws.delta), np.asarray(draws.eps)
  cov = perturbation_covariances(x, y, st, samplers.theta_moments(sampler))
  for i in (0, 5):
    for samples in (delta[:, i], eps[:, i]):
      se = samples.std(0, ddof=1) / np.sqrt(len(samples))
      assert np.all(np.abs(samples.mean(0)) < 5 * se + 1e-12)  # E δ = E ε = 0
    prods = {
        0: np.einsum("ka,kb->kab", delta[:, i], delta[:, i]),
        1: np.einsum("ka,kb->kab", delta[:, i], eps[:, i]),
        2: np.einsum("ka,kb->kab", eps[:, i], eps[:, i]),
    }
    for which, prod in prods.items():
      se = prod.std(0, ddof=1) / np.sqrt(len(prod))
      assert np.all(np.abs(prod.mean(0) - np.asarray(cov.dense(i)[which])) < 5 * se + 1e-12)


def test_perturbed_erm_loss_bad_args():
  x, y, params = _problem()
  st = data_stats(x, y)
  with pytest.raises(ValueError, match="num_draws"):
    perturbed_erm_loss(jax.random.key(0), _jax_net(params), x, y, samplers.beta(1.0), st,
                       num_draws=0)
  with pytest.raises(ValueError, match="Batch size mismatch"):
    perturbed_erm_loss(jax.random.key(0), _jax_net(params), x, y[:3], samplers.beta(1.0), st)
