"""Tests for mixjax.losses against SciPy/NumPy references and quadrature over λ."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special

from mixjax import losses
from mixjax import samplers

D, H, C = 4, 6, 3


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return dict(w1=rng.normal(size=(D, H)) / 2, b1=rng.normal(size=(H,)) / 4,
              w2=rng.normal(size=(H, C)), b2=rng.normal(size=(C,)) / 4)


def _f_jax(params, x):
  p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _f_np(params, x):
  return np.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _np_ce(y, u):
  return -np.sum(y * scipy.special.log_softmax(u, axis=-1), axis=-1)


def _np_sq(y, u):
  return np.sum((y - u) ** 2, axis=-1)


NP_LOSSES = {"cross_entropy": _np_ce, "squared": _np_sq}


def _data(batch_size, seed=1, soft=True):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch_size, D)).astype(np.float32)
  if soft:
    y = rng.dirichlet(np.ones(C), size=batch_size).astype(np.float32)
  else:
    y = np.eye(C, dtype=np.float32)[rng.integers(0, C, size=batch_size)]
  return x, y


def _np_pair_loss(params, loss, x, y, i, j, lam):
  """ℓ(λ y_i + (1−λ) y_j, f(λ x_i + (1−λ) x_j)) in float64 NumPy."""
  xm = lam * x[i].astype(np.float64) + (1 - lam) * x[j]
  ym = lam * y[i].astype(np.float64) + (1 - lam) * y[j]
  return float(NP_LOSSES[loss](ym, _f_np(params, xm)))


def test_cross_entropy_matches_scipy():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(7, 5)) * 3
  y = rng.dirichlet(np.ones(5), size=7)
  got = losses.batch_loss("cross_entropy", y.astype(np.float32), u.astype(np.float32))
  assert got.shape == (7,)
  np.testing.assert_allclose(got, _np_ce(y, u), rtol=1e-5)
  # Per-example call, as the theory modules use it.
  np.testing.assert_allclose(losses.cross_entropy(y[0], u[0]), _np_ce(y[0], u[0]), rtol=1e-5)


def test_squared_matches_numpy():
  rng = np.random.default_rng(1)
  u, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  np.testing.assert_allclose(losses.batch_loss(losses.squared, y, u),
                             ((y - u) ** 2).sum(-1), rtol=1e-5)


def test_get_loss():
  assert losses.get_loss("cross_entropy") is losses.cross_entropy
  assert losses.get_loss("squared") is losses.squared
  fn = lambda y, u: jnp.sum(jnp.abs(y - u))
  assert losses.get_loss(fn) is fn
  assert set(losses.LOSSES.names()) >= {"cross_entropy", "squared"}
  with pytest.raises(ValueError, match="cross_entropy.*squared"):
    losses.get_loss("hinge")


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_erm_loss_matches_numpy(loss):
  params = _params()
  x, y = _data(9)
  got = losses.erm_loss(functools.partial(_f_jax, params), x, y, loss=loss)
  want = NP_LOSSES[loss](y.astype(np.float64), _f_np(params, x.astype(np.float64))).mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
@pytest.mark.parametrize("granularity", ["example", "batch"])
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("batch_size", [6, 7])
def test_mixup_loss_reverse_constant_by_hand(loss, granularity, fold, batch_size):
  params = _params()
  x, y = _data(batch_size)
  lam0 = 0.3
  got = losses.mixup_loss(jax.random.key(0), functools.partial(_f_jax, params), x, y,
                          samplers.constant(lam0), loss=loss, granularity=granularity,
                          pairing="reverse", fold=fold)
  lam = max(lam0, 1 - lam0) if fold else lam0
  want = np.mean([_np_pair_loss(params, loss, x, y, i, batch_size - 1 - i, lam)
                  for i in range(batch_size)])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _mc(loss_fn, num_keys, seed=0):
  keys = jax.random.split(jax.random.key(seed), num_keys)
  vals = np.asarray(jax.jit(jax.vmap(loss_fn))(keys), np.float64)
  return vals.mean(), vals.std(ddof=1) / np.sqrt(num_keys)


def _beta_expectation(fn, a):
  """∫ fn(λ) Beta(a, a)(dλ) by quad with the algebraic weight λ^(a−1)(1−λ)^(a−1)."""
  val, _ = scipy.integrate.quad(fn, 0, 1, weight="alg", wvar=(a - 1, a - 1))
  return val / scipy.special.beta(a, a)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
@pytest.mark.parametrize("fold", [False, True])
def test_mixup_loss_beta_reverse_expectation(loss, fold):
  # E_λ of the batch loss with fixed (reverse) partners, by quadrature. With reverse
  # pairing, folding λ leaves the expectation unchanged (docs/THEORY.md §1).
  alpha, batch_size, num_keys = 0.5, 7, 4000
  params = _params(2)
  x, y = _data(batch_size, seed=3, soft=False)
  want = np.mean([
      _beta_expectation(lambda l, i=i: _np_pair_loss(params, loss, x, y, i,
                                                     batch_size - 1 - i, l), alpha)
      for i in range(batch_size)])
  fn = lambda k: losses.mixup_loss(k, functools.partial(_f_jax, params), x, y,
                                   samplers.beta(alpha), loss=loss, pairing="reverse",
                                   fold=fold)
  mean, se = _mc(fn, num_keys)
  assert abs(mean - want) < 5 * se, (mean, want, se)


@pytest.mark.parametrize("granularity", ["example", "batch"])
def test_mixup_loss_beta_permutation_expectation(granularity):
  # Over λ ~ Beta and a uniform permutation, the expectation is the batch mixup risk
  # (1/B²) Σ_i Σ_j E_λ ℓ(λ y_i + (1−λ) y_j, f(λ x_i + (1−λ) x_j)) (docs/THEORY.md, Setup).
  alpha, batch_size, num_keys = 2.0, 5, 4000
  params = _params(4)
  x, y = _data(batch_size, seed=5)
  want = np.mean([
      _beta_expectation(lambda l, i=i, j=j: _np_pair_loss(params, "cross_entropy", x, y,
                                                          i, j, l), alpha)
      for i in range(batch_size) for j in range(batch_size)])
  fn = lambda k: losses.mixup_loss(k, functools.partial(_f_jax, params), x, y,
                                   samplers.beta(alpha), granularity=granularity)
  mean, se = _mc(fn, num_keys, seed=1)
  assert abs(mean - want) < 5 * se, (mean, want, se)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_regmixup_is_erm_plus_eta_mixup(loss):
  params = _params()
  f = functools.partial(_f_jax, params)
  x, y = _data(8)
  key, sampler, eta = jax.random.key(9), samplers.beta(10.0), 0.7
  got = losses.regmixup_loss(key, f, x, y, sampler, eta=eta, loss=loss)
  want = (losses.erm_loss(f, x, y, loss=loss)
          + eta * losses.mixup_loss(key, f, x, y, sampler, loss=loss))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # And against NumPy, with the reverse pairing and a constant λ.
  got = losses.regmixup_loss(key, f, x, y, samplers.constant(0.8), eta=eta, loss=loss,
                             pairing="reverse")
  want = (NP_LOSSES[loss](y.astype(np.float64), _f_np(params, x.astype(np.float64))).mean()
          + eta * np.mean([_np_pair_loss(params, loss, x, y, i, 7 - i, 0.8) for i in range(8)]))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_squared_mixup_gradient_linear_model():
  # f(x) = W x, squared loss, constant λ, reverse pairs: ∇_W = −(2/B) Σ_i (ỹ_i − W x̃_i) x̃_iᵀ.
  rng = np.random.default_rng(0)
  x, y = _data(6)
  w = rng.normal(size=(D, C)).astype(np.float32)
  grad = jax.grad(lambda w: losses.mixup_loss(jax.random.key(0), lambda x: x @ w, x, y,
                                              samplers.constant(0.6), loss="squared",
                                              pairing="reverse"))(w)
  xm = 0.6 * x.astype(np.float64) + 0.4 * x[::-1]
  ym = 0.6 * y.astype(np.float64) + 0.4 * y[::-1]
  want = -2 * xm.T @ (ym - xm @ w) / 6
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


def test_jitted_mixup_loss_traces_once():
  sampler = samplers.beta(1.0)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, x, y, key):
    return jax.value_and_grad(
        lambda p: losses.mixup_loss(key, functools.partial(_f_jax, p), x, y, sampler))(params)

  chex.clear_trace_counter()
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _params())
  for k in range(4):
    x, y = _data(8, seed=k)
    value, grads = step(params, x, y, jax.random.key(k))
    chex.assert_tree_all_finite((value, grads))


def test_errors():
  params = _params()
  f = functools.partial(_f_jax, params)
  x, _ = _data(4)
  key, sampler = jax.random.key(0), samplers.uniform()
  int_labels = np.array([0, 2, 1, 0])
  for call in (lambda: losses.erm_loss(f, x, int_labels),
               lambda: losses.mixup_loss(key, f, x, int_labels, sampler),
               lambda: losses.regmixup_loss(key, f, x, int_labels, sampler)):
    with pytest.raises(ValueError, match=r"jax\.nn\.one_hot"):
      call()
  y = np.eye(C + 1, dtype=np.float32)[int_labels]  # 4 classes, model outputs 3
  with pytest.raises(ValueError, match="same shape"):
    losses.erm_loss(f, x, y)
  with pytest.raises(ValueError, match="Batch size mismatch"):
    losses.mixup_loss(key, f, x, np.eye(C, dtype=np.float32)[:3], sampler)
  with pytest.raises(ValueError, match="eta"):
    losses.regmixup_loss(key, f, x, np.eye(C, dtype=np.float32)[int_labels], sampler, eta=-1.0)
  with pytest.raises(ValueError, match="Known loss functions: cross_entropy, squared"):
    losses.mixup_loss(key, f, x, np.eye(C, dtype=np.float32)[int_labels], sampler, loss="l1")
