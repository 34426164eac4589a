"""The public API as a user meets it: the README's snippet, the key-first convention,
and `from mixjax import approx_mixup_risk` as a loss."""
from __future__ import annotations

import os
import re

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
    return approx_mixup_risk(None, f, x, y, stats, sampler, loss="squared", estimator=estimator)

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
    return approx_mixup_risk(key, f, x, y, stats, sampler, loss="squared",
                             estimator="stochastic", num_probes=4)

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


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_snippet() -> str:
  """The first ```python block under the README heading "## The research core in five
  lines"."""
  with open(README, encoding="utf-8") as fh:
    text = fh.read()
  head = text.index("## The research core in five lines")
  match = re.compile(r"```python\n(.*?)```", re.S).search(text, head)
  assert match is not None, "no ```python block under the heading"
  return match.group(1)


def test_readme_snippet_runs_as_written():
  """The README's snippet defines f, x, y and key itself and runs as written; what it
  computes is finite and shaped as its comments say."""
  namespace = {}
  exec(compile(_readme_snippet(), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  x, y = namespace["x"], namespace["y"]
  assert namespace["x_mix"].shape == x.shape and namespace["y_mix"].shape == y.shape
  for name in ("loss", "risk"):
    assert np.isfinite(float(namespace[name])), name
  assert namespace["f_test"](x).shape == y.shape


def _tiny():
  key = jax.random.key(0)
  x = jnp.ones((4, 3))
  y = jax.nn.one_hot(jnp.arange(4) % 2, 2)
  f = lambda z: z @ jnp.ones((3, 2))
  return key, f, x, y, mixjax.data_stats(np.arange(12.0).reshape(4, 3) % 5, y)


def test_the_key_comes_first_everywhere():
  """Every function that draws randomness takes the PRNG key first; the old order (or any
  non-key in its place) raises one TypeError that names the convention."""
  key, f, x, y, stats = _tiny()
  law = samplers.beta(1.0)
  calls = {
      "mix": lambda k: mixjax.mix(k, x, y, law),
      "mixup_loss": lambda k: mixjax.mixup_loss(k, f, x, y, law),
      "regmixup_loss": lambda k: mixjax.regmixup_loss(k, f, x, y, law),
      "perturbed_erm_loss": lambda k: mixjax.perturbed_erm_loss(k, f, x, y, law, stats),
      "approx_mixup_risk": lambda k: mixjax.approx_mixup_risk(
          k, f, x, y, stats, law, estimator="stochastic"),
      "approx_mixup_terms": lambda k: mixjax.approx_mixup_terms(
          k, f, x, y, stats, law, estimator="stochastic"),
      "sample_perturbations": lambda k: mixjax.theory.sample_perturbations(
          k, x, y, x, y, stats, law),
  }
  for name, call in calls.items():
    jax.tree.map(np.asarray, call(key))  # a typed key works
    jax.tree.map(np.asarray, call(jax.random.PRNGKey(0)))  # and a raw uint32 key
    for bad in (f, jnp.zeros(2), 3):
      with pytest.raises(TypeError, match=rf"mixjax takes the PRNG key first: {name}\(key"):
        call(bad)
  # The old argument order names the convention instead of JAX's dtype error.
  with pytest.raises(TypeError, match=r"got a function .*mixup_loss\(key, f, x, y, law\)"):
    mixjax.mixup_loss(f, x, y, key, law)
  with pytest.raises(TypeError, match=r"perturbed_erm_loss\(key, f, x, y, law, stats\)"):
    mixjax.perturbed_erm_loss(f, x, y, key, law, stats)
  # The deterministic estimators take key=None.
  assert np.isfinite(float(mixjax.approx_mixup_risk(None, f, x, y, stats, law)))


def test_approx_default_terms_are_the_trainers():
  """One default per knob: the library's default terms drop the hessian term (R2), as the
  trainer's `method.terms` does; an explicit terms=TERMS adds it back."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  assert tuple(config_lib.base_config().method.terms) == mixjax.theory.DEFAULT_TERMS
  assert "hessian" not in mixjax.theory.DEFAULT_TERMS
  key, _, x, y, stats = _tiny()
  f = lambda z: jnp.tanh(z @ jnp.arange(6.0).reshape(3, 2) / 10)
  law = samplers.beta(1.0)
  t = mixjax.approx_mixup_terms(None, f, x, y, stats, law, terms=mixjax.theory.TERMS)
  default = mixjax.approx_mixup_risk(None, f, x, y, stats, law)
  np.testing.assert_allclose(default, t["erm"] + t["jacobian"] + t["cross"] + t["label"],
                             rtol=1e-6)
  full = mixjax.approx_mixup_risk(None, f, x, y, stats, law, terms=mixjax.theory.TERMS)
  np.testing.assert_allclose(full - default, t["hessian"], rtol=1e-5, atol=1e-7)
