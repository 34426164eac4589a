"""Temperature scaling against the maximum-likelihood truth and a brute-force NLL grid."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special

from mixjax.eval import apply_temperature
from mixjax.eval import fit_temperature
from mixjax.eval import temperature_nll


def _nll(logits, labels, temperature):
  """Reference mean NLL of softmax(logits / T) with SciPy, in float64."""
  log_p = scipy.special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
  return -log_p[np.arange(len(labels)), labels].mean()


def _synthetic(seed, n, c, t_star, scale=1.5):
  """Labels ~ softmax(z); the model reports logits = T* z, so T = T* undoes it."""
  rng = np.random.default_rng(seed)
  z = scale * rng.normal(size=(n, c))
  labels = np.argmax(z + rng.gumbel(size=(n, c)), axis=-1).astype(np.int32)
  return (t_star * z).astype(np.float32), labels, z


@pytest.mark.parametrize("t_star", [0.5, 2.5])
def test_recovers_true_temperature(t_star):
  n, c = 20000, 10
  logits, labels, z = _synthetic(int(10 * t_star), n, c, t_star)
  t_hat = fit_temperature(logits, labels)
  # Asymptotic MLE standard error: β = 1/T has per-example Fisher information
  # I = E Var_{softmax(z)}[logits]; SE(T̂) = T*² / sqrt(N I) by the delta method.
  p = scipy.special.softmax(z, axis=-1)
  u = logits.astype(np.float64)
  fisher = np.mean(np.sum(p * u**2, -1) - np.sum(p * u, -1) ** 2)
  se_t = t_star**2 / np.sqrt(n * fisher)
  assert abs(t_hat - t_star) < 5 * se_t, (t_hat, t_star, se_t)
  assert se_t < 0.05 * t_star  # the tolerance is informative


def test_matches_brute_force_grid():
  rng = np.random.default_rng(1)
  n, c = 3000, 6
  z = rng.normal(size=(n, c))
  labels = np.argmax(1.7 * z + rng.gumbel(size=(n, c)), axis=-1).astype(np.int32)
  logits = z.astype(np.float32)
  t_fit = fit_temperature(logits, labels)
  coarse = np.geomspace(0.05, 20.0, 301)
  t0 = coarse[np.argmin([_nll(logits, labels, t) for t in coarse])]
  fine = np.linspace(t0 / 1.03, t0 * 1.03, 1201)  # spacing ~ 5e-5 t0
  t_grid = fine[np.argmin([_nll(logits, labels, t) for t in fine])]
  np.testing.assert_allclose(t_fit, t_grid, rtol=1e-3)
  assert _nll(logits, labels, t_fit) <= _nll(logits, labels, t_grid) + 1e-7
  assert _nll(logits, labels, t_fit) < _nll(logits, labels, 1.0)
  np.testing.assert_allclose(temperature_nll(logits, labels, t_fit),
                             _nll(logits, labels, t_fit), rtol=1e-5)


def test_temperature_always_positive():
  rng = np.random.default_rng(2)
  n, c = 500, 4
  labels = rng.integers(0, c, size=n).astype(np.int32)
  onehot = np.eye(c, dtype=np.float32)[labels]
  noise = 0.1 * rng.normal(size=(n, c)).astype(np.float32)
  cases = {
      "separable": 5 * onehot + noise,      # NLL falls as T -> 0
      "anti": -5 * onehot + noise,          # NLL falls as T -> inf
      "constant": np.zeros((n, c), np.float32),
      "random": rng.normal(size=(n, c)).astype(np.float32),
  }
  for name, logits in cases.items():
    t = fit_temperature(logits, labels, min_temperature=0.01, max_temperature=100.0)
    assert isinstance(t, float) and np.isfinite(t) and 0.01 <= t <= 100.0, (name, t)
    assert _nll(logits, labels, t) <= _nll(logits, labels, 1.0) + 1e-6, name
  assert fit_temperature(cases["separable"], labels, min_temperature=0.01) == 0.01
  assert fit_temperature(cases["anti"], labels, max_temperature=100.0) == 100.0
  assert fit_temperature(cases["constant"], labels) == 1.0


def test_apply_temperature_and_errors():
  logits = np.array([[1.0, -2.0, 0.5]], np.float32)
  np.testing.assert_allclose(apply_temperature(logits, 2.0), logits / 2.0)
  assert apply_temperature(logits, 2.0).dtype == np.float32
  for bad in (0.0, -1.0, np.nan, np.inf):
    with pytest.raises(ValueError, match="temperature"):
      apply_temperature(logits, bad)
  labels = np.array([0], np.int32)
  with pytest.raises(ValueError, match="NaN"):
    fit_temperature(np.full((1, 3), np.nan, np.float32), labels)
  with pytest.raises(ValueError, match="labels"):
    fit_temperature(logits, np.array([0, 1], np.int32))
  with pytest.raises(ValueError, match="lie in"):
    fit_temperature(logits, np.array([3], np.int32))
  with pytest.raises(ValueError, match="min_temperature"):
    fit_temperature(logits, labels, min_temperature=0.0)
