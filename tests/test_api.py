"""The public API as a user meets it: `from mixjax import approx_mixup_risk` as a loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mixjax
from mixjax import approx_mixup_risk
from mixjax import samplers


def _affine_problem(seed=0, n=64, d=5, c=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w_true = rng.normal(size=(d, c))
  y = (x @ w_true + 0.3 * rng.normal(size=(n, c))).astype(np.float32)
  return x, y


def _ols(x, y):
  xa = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
  sol, *_ = np.linalg.lstsq(xa, y.astype(np.float64), rcond=None)
  return sol[:-1], sol[-1]


@pytest.mark.parametrize("estimator", ["exact", "lowrank"])
def test_training_on_approx_risk_reaches_least_squares(estimator):
  """Squared loss + affine model: the quadratic risk is the mixup risk exactly, and its
  minimizer is ordinary least squares on the original data (docs/THEORY.md §4). Train on
  `approx_mixup_risk` with optax and compare with `np.linalg.lstsq`."""
  x, y = _affine_problem()
  stats = mixjax.data_stats(x, y, rank=x.shape[1] if estimator == "lowrank" else None)
  sampler = samplers.beta(1.0)

  def loss_fn(params):
    f = lambda xb: xb @ params["w"] + params["b"]
    return approx_mixup_risk(f, x, y, stats, sampler, loss="squared", estimator=estimator)

  params = {"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros((y.shape[1],))}
  opt = optax.lbfgs()
  state = opt.init(params)
  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  @jax.jit
  def step(params, state):
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss_fn)
    return optax.apply_updates(params, updates), state

  for _ in range(60):
    params, state = step(params, state)
  w_ols, b_ols = _ols(x, y)
  np.testing.assert_allclose(params["w"], w_ols, atol=2e-3)
  np.testing.assert_allclose(params["b"], b_ols, atol=2e-3)


def test_stochastic_estimator_trains_towards_least_squares():
  """With the unbiased stochastic estimator and SGD, the iterates approach OLS; the
  distance shrinks by a large factor from the zero initialization."""
  x, y = _affine_problem(seed=1)
  stats = mixjax.data_stats(x, y)
  sampler = samplers.beta(0.5)

  def loss_fn(params, key):
    f = lambda xb: xb @ params["w"] + params["b"]
    return approx_mixup_risk(f, x, y, stats, sampler, loss="squared", estimator="stochastic",
                             key=key, num_probes=4)

  params = {"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros((y.shape[1],))}
  opt = optax.sgd(optax.exponential_decay(0.05, 100, 0.5))
  state = opt.init(params)

  @jax.jit
  def step(params, state, key):
    grad = jax.grad(loss_fn)(params, key)
    updates, state = opt.update(grad, state)
    return optax.apply_updates(params, updates), state

  w_ols, b_ols = _ols(x, y)
  dist0 = np.linalg.norm(w_ols)
  key = jax.random.key(0)
  for t in range(600):
    params, state = step(params, state, jax.random.fold_in(key, t))
  dist = np.linalg.norm(np.asarray(params["w"]) - w_ols)
  assert dist < 0.05 * dist0, (dist, dist0)
