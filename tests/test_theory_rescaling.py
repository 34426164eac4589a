"""Tests for mixjax.theory.rescaled (docs/THEORY.md §5) against the formula in NumPy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import samplers
from mixjax.theory import data_stats, rescaled


pytestmark = pytest.mark.usefixtures("x64")  # float64 for this module (conftest.py)


def _problem(seed=0, n=9, shape=(2, 2, 1), c=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n,) + shape)
  y = np.eye(c)[rng.integers(0, c, n)]
  w = rng.normal(size=(int(np.prod(shape)), c))
  return x, y, w


def test_rescaled_matches_formula_on_image_batches():
  x, y, w = _problem()
  st = data_stats(x, y)
  net = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ jnp.asarray(w))
  theta_bar = samplers.theta_moments(samplers.beta(1.0)).mean  # 0.75
  x_test = np.random.default_rng(1).normal(size=(5,) + x.shape[1:])
  out = jax.jit(rescaled(net, st, theta_bar))(x_test)
  x_bar, y_bar = x.mean(0), y.mean(0)
  expected = y_bar + (np.tanh((x_bar + theta_bar * (x_test - x_bar)).reshape(5, -1) @ w)
                      - y_bar) / theta_bar
  assert out.shape == (5, 3)
  np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_theta_bar_one_is_the_identity_and_balanced_shift_cancels_in_softmax():
  x, y, w = _problem(seed=2)
  st = data_stats(x, y)
  net = lambda z: z.reshape(z.shape[0], -1) @ jnp.asarray(w)
  np.testing.assert_allclose(rescaled(net, st, 1.0)(x), net(x), rtol=1e-13)
  # With balanced classes (ȳ constant) the output side is temperature sharpening by θ̄.
  y_bal = np.full_like(y, 1 / 3)
  st_bal = data_stats(x, y_bal)
  probs = jax.nn.softmax(rescaled(net, st_bal, 0.8)(x))
  x_t = x.mean(0) + 0.8 * (x - x.mean(0))
  np.testing.assert_allclose(probs, jax.nn.softmax(net(x_t) / 0.8), rtol=1e-12)


def test_rescaling_leaves_least_squares_predictions_unchanged():
  # OLS with an intercept fits the means (ȳ = W x̄ + b), so f_test = f for any θ̄.
  rng = np.random.default_rng(3)
  n, d, c = 20, 4, 2
  x = rng.normal(size=(n, d))
  y = x @ rng.normal(size=(d, c)) + 0.3 * rng.normal(size=(n, c))
  coef, *_ = np.linalg.lstsq(np.concatenate([x, np.ones((n, 1))], 1), y, rcond=None)
  ols = lambda z: z @ jnp.asarray(coef[:d]) + jnp.asarray(coef[d])
  st = data_stats(x, y)
  x_test = rng.normal(size=(7, d))
  for theta_bar in (0.6, samplers.theta_moments(samplers.optimal()).mean):
    np.testing.assert_allclose(rescaled(ols, st, theta_bar)(x_test), ols(x_test), rtol=1e-10,
                               atol=1e-12)
  # A model that does not fit the means does change (the check can fail).
  shifted = lambda z: ols(z) + 1.0
  assert not np.allclose(rescaled(shifted, st, 0.6)(x_test), shifted(x_test))


@pytest.mark.parametrize("theta_bar", [0.0, -0.5, 1.5])
def test_bad_theta_bar_raises(theta_bar):
  x, y, w = _problem()
  with pytest.raises(ValueError, match="theta_bar"):
    rescaled(lambda z: z, data_stats(x, y), theta_bar)


def test_shape_mismatch_raises():
  x, y, w = _problem()
  st = data_stats(x, y)
  f_test = rescaled(lambda z: z.reshape(z.shape[0], -1) @ jnp.asarray(w), st, 0.75)
  with pytest.raises(ValueError, match="dimension"):
    f_test(np.zeros((2, 5)))
