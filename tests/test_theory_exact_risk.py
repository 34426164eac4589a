"""Tests for mixjax.theory.exact_mixup_risk against SciPy quadrature and least squares."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from mixjax import samplers
from mixjax.theory import exact_mixup_risk

N, D, C, HIDDEN = 7, 3, 4, 5


pytestmark = pytest.mark.usefixtures("x64")  # float64 for this module (conftest.py)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, D))
  y = rng.dirichlet(np.ones(C), size=N)
  params = (rng.normal(size=(D, HIDDEN)), 0.3 * rng.normal(size=HIDDEN),
            rng.normal(size=(HIDDEN, C)) / 2, 0.3 * rng.normal(size=C))
  return x, y, params


def _np_net(params, x):
  w1, b1, w2, b2 = params
  return np.tanh(x.reshape(x.shape[:-2] + (-1,)) @ w1 + b1) @ w2 + b2


def _jax_net(params):
  w1, b1, w2, b2 = params
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2 + b2


def _np_loss(name, y, u):
  if name == "squared":
    return np.sum((y - u) ** 2, axis=-1)
  m = u.max(-1, keepdims=True)
  return -np.sum(y * (u - m - np.log(np.sum(np.exp(u - m), -1, keepdims=True))), axis=-1)


def _quad_reference(params, x, y, a, loss):
  """∫ Beta(a, a)(λ) (1/n²) Σ_i Σ_j ℓ(λy_i + (1−λ)y_j, f(λx_i + (1−λ)x_j)) dλ in NumPy."""
  def integrand(lam):
    xm = lam * x[:, None] + (1 - lam) * x[None, :]
    ym = lam * y[:, None] + (1 - lam) * y[None, :]
    return scipy.stats.beta(a, a).pdf(lam) * np.mean(_np_loss(loss, ym, _np_net(params, xm)))
  value, _ = scipy.integrate.quad(integrand, 0.0, 1.0, epsabs=1e-13, epsrel=1e-12, limit=200)
  return value


@pytest.mark.parametrize("loss,a", [("cross_entropy", 2.0), ("squared", 2.0),
                                    ("cross_entropy", 1.0)])
def test_exact_risk_against_quad(loss, a):
  x, y, params = _problem(seed=int(a))
  x_img = x.reshape(N, 1, D)  # trailing input shape is kept through the mixing
  value = exact_mixup_risk(_jax_net(tuple(map(jnp.asarray, params))), x_img, y,
                           samplers.beta(a), loss=loss, num_nodes=32)
  np.testing.assert_allclose(float(value), _quad_reference(params, x_img, y, a, loss), rtol=1e-6)


def test_chunk_size_does_not_change_the_value():
  x, y, params = _problem(seed=3)
  f = _jax_net(tuple(map(jnp.asarray, params)))
  sampler = samplers.beta(0.5)
  values = [float(exact_mixup_risk(f, x, y, sampler, num_nodes=8, chunk_size=cs))
            for cs in (1, 3, N, 100)]
  np.testing.assert_allclose(values, values[0], rtol=1e-13)


def test_gradient_matches_finite_differences():
  x, y, params = _problem(seed=4)
  params = tuple(map(jnp.asarray, params))
  sampler = samplers.beta(1.0)
  risk = jax.jit(lambda p: exact_mixup_risk(_jax_net(p), x, y, sampler, num_nodes=16,
                                            chunk_size=3))
  grad = jax.grad(risk)(params)
  rng = np.random.default_rng(5)
  direction = tuple(jnp.asarray(rng.normal(size=p.shape)) for p in params)
  h = 1e-5
  shifted = lambda t: tuple(p + t * v for p, v in zip(params, direction))
  fd = (float(risk(shifted(h))) - float(risk(shifted(-h)))) / (2 * h)
  analytic = sum(float(jnp.sum(g * v)) for g, v in zip(grad, direction))
  np.testing.assert_allclose(analytic, fd, rtol=1e-7)


def test_gradient_vanishes_at_least_squares_for_affine_model():
  rng = np.random.default_rng(6)
  n, d, c = 12, 3, 2
  x = rng.normal(size=(n, d))
  y = x @ rng.normal(size=(d, c)) + 0.5 * rng.normal(size=(n, c))  # real-valued targets
  coef, *_ = np.linalg.lstsq(np.concatenate([x, np.ones((n, 1))], 1), y, rcond=None)
  w_ols, b_ols = jnp.asarray(coef[:d]), jnp.asarray(coef[d])
  risk = jax.jit(lambda w, b: exact_mixup_risk(lambda z: z @ w + b, x, y, samplers.beta(0.4),
                                               loss="squared", num_nodes=8))
  gw, gb = jax.grad(risk, argnums=(0, 1))(w_ols, b_ols)
  np.testing.assert_allclose(gw, 0.0, atol=1e-12)
  np.testing.assert_allclose(gb, 0.0, atol=1e-12)
  # ... and not elsewhere (the check can fail).
  gw2, _ = jax.grad(risk, argnums=(0, 1))(w_ols + 0.1, b_ols)
  assert np.max(np.abs(gw2)) > 1e-3


def test_jit_traces_once_over_repeated_calls():
  x, y, params = _problem(seed=7)
  sampler = samplers.beta(1.0)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def risk(p, xb, yb):
    return exact_mixup_risk(_jax_net(p), xb, yb, sampler, num_nodes=8)

  for k in range(3):
    p = tuple(jnp.asarray(a) * (1 + 0.1 * k) for a in params)
    assert np.isfinite(float(risk(p, x + k, y)))


def test_bad_arguments_raise():
  x, y, params = _problem()
  f = _jax_net(tuple(map(jnp.asarray, params)))
  with pytest.raises(ValueError, match="num_nodes"):
    exact_mixup_risk(f, x, y, samplers.beta(1.0), num_nodes=0)
  with pytest.raises(ValueError, match="chunk_size"):
    exact_mixup_risk(f, x, y, samplers.beta(1.0), chunk_size=0)
  with pytest.raises(ValueError, match="Batch size mismatch"):
    exact_mixup_risk(f, x, y[:4], samplers.beta(1.0))
